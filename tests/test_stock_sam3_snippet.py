"""docs/using.md's "load a merged checkpoint with stock sam3" snippet works as written.

The pip sam3 wheel ships no BPE vocabulary (its builder's default ``bpe_path`` points into the
package, at a file that is not there); the snippet names the copy open-clip-torch ships. Stock sam3
builds the image model on CUDA only, so the snippet runs whole on a GPU; its BPE path is checked here
on every machine, through stock sam3's own tokenizer.
"""

import ast
from pathlib import Path

import pytest
import torch
from test_docs import blocks_of

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "using.md"


def _snippet() -> str:
    (block,) = [
        b for b in blocks_of(PAGE) if b.lang == "python" and any("build_sam3_image_model(" in line for line in b.lines)
    ]
    return "\n".join(block.lines)


def _run_all_but_the_build(code: str) -> dict:
    """The snippet's statements before its ``build_sam3_image_model`` call, run as written."""
    tree = ast.parse(code)
    before = [s for s in tree.body if "build_sam3_image_model(" not in ast.unparse(s)]
    scope: dict = {}
    exec(compile(ast.Module(body=before, type_ignores=[]), str(PAGE), "exec"), scope)  # noqa: S102 - our own docs
    return scope


def test_the_stock_wheel_ships_no_bpe_file_and_the_snippet_names_one_that_exists():
    import sam3.model_builder

    stock_default = Path(sam3.model_builder.__file__).parent / ".." / "assets" / "bpe_simple_vocab_16e6.txt.gz"
    assert not stock_default.resolve().is_file()  # why the snippet passes bpe_path at all
    bpe_path = Path(_run_all_but_the_build(_snippet())["bpe_path"])
    assert bpe_path.is_file(), bpe_path
    from sam3.model.tokenizer_ve import SimpleTokenizer

    ids = SimpleTokenizer(bpe_path=str(bpe_path))(["a photo of a cat"], context_length=8)[0].tolist()
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407, 0]  # CLIP's vocabulary: sot, a, photo, of, a, cat, eot


def test_a_merged_exports_card_shows_the_same_snippet():
    """The card written beside every ``format=merged`` export tells the same (tested) way to load it."""
    from sam3_lora.hf.model_card import RunFacts, export_card

    card = export_card("merged", RunFacts(model_name="sam3", checkpoint_path="sam3.pt"), output_name="sam3_tuned.pt")
    (block,) = [b for b in blocks_of(PAGE, card.render()) if b.lang == "python"]
    assert "\n".join(block.lines) == _snippet()


@pytest.mark.cuda
def test_the_snippet_loads_a_merged_checkpoint_as_written(tmp_path, monkeypatch, capsys):
    """A LoRA-merged full-size checkpoint written as ``export format=merged`` writes it, loaded by the
    documented snippet, run whole as written (stock sam3 builds on CUDA only)."""
    from sam3_lora.lora import LoraConfig, inject_lora
    from sam3_lora.lora.inject import merged_state_dict
    from sam3_lora.models import build_model
    from sam3_lora.models.sam3_layout import save_sam3_state

    torch.manual_seed(0)
    tuned = build_model("sam3", random_init=True)  # sam3's own builder; no sam3.pt here
    base = {k: v.clone() for k, v in tuned.state_dict().items() if k.endswith("out_proj.weight")}
    inject_lora(tuned, LoraConfig(rank=4, targets=["out_proj"], parts=["decoder"]))
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if name.endswith("lora_B"):
                p.normal_()  # a trained adapter: the merge changes the weights
    merged = merged_state_dict(tuned)
    del tuned
    changed = [k for k, v in base.items() if not torch.equal(merged[k], v)]
    assert changed, "the merge changed no weight"
    save_sam3_state(merged, tmp_path / "sam3_tuned.pt", sam3_lora={"base_model": "sam3"})  # as export's merged
    monkeypatch.chdir(tmp_path)  # the snippet's "sam3_tuned.pt"
    capsys.readouterr()
    scope: dict = {}
    exec(compile(_snippet(), str(PAGE), "exec"), scope)  # noqa: S102 - the documented snippet, as written
    assert "missing and/or unexpected keys" not in capsys.readouterr().out  # stock's loader found every weight
    loaded = {k: v.detach().cpu() for k, v in scope["model"].state_dict().items()}
    assert sorted(loaded) == sorted(merged)
    for name, value in merged.items():
        assert torch.equal(loaded[name], value), name
