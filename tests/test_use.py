"""Using a trained adapter: evaluate, predict, merge/export for stock sam3 and PEFT, describe."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import compose_command, tiny_run_overrides, train_in_process
from omegaconf import OmegaConf
from PIL import Image
from pycocotools.coco import COCO
from synthetic import final_outputs, make_batch

from sam3_lora import describe as describe_cmd
from sam3_lora import evaluate as evaluate_cmd
from sam3_lora import export as export_cmd
from sam3_lora import predict as predict_cmd
from sam3_lora.data import toy
from sam3_lora.core.outputs import OutputError
from sam3_lora.lora import AdapterError, load_adapter, lora_modules
from sam3_lora.lora.peft_format import PeftExportError
from sam3_lora.models import build_model
from sam3_lora.pipeline.tuned import RunDirError, load_tuned


@pytest.fixture(scope="module")
def trained_run(toy_root, tmp_path_factory):
    """LoRA on vision, encoder and decoder (Linear and attention updates), three epochs."""
    run_dir = tmp_path_factory.mktemp("run")
    train_in_process(
        tiny_run_overrides(toy_root, "trainer.max_epochs=3", "lora.targets=[all]", "final_eval.compare_base=true"),
        run_dir,
    )
    return run_dir


@pytest.fixture(scope="module")
def linear_only_run(toy_root, tmp_path_factory):
    """LoRA on the vision backbone only: every update on an nn.Linear (PEFT can hold them all)."""
    run_dir = tmp_path_factory.mktemp("run_linear")
    train_in_process(
        tiny_run_overrides(toy_root, "trainer.max_epochs=2", "lora.targets=[all]", "lora.parts=[vision]"), run_dir
    )
    return run_dir


def _outputs(model, batch):
    model.eval()
    with torch.no_grad():
        return final_outputs(model(batch))


def _assert_same_predictions(a, b, tol=1e-4):
    for key in ("pred_logits", "pred_boxes", "pred_masks"):
        err = (a[key] - b[key]).abs().max() / b[key].abs().max().clamp_min(1e-6)
        assert err < tol, (key, float(err))


def test_evaluate_matches_training_and_reports_per_category(trained_run):
    result = evaluate_cmd.evaluate(compose_command("evaluate", run_dir=trained_run, num_workers=0))
    final = json.loads((trained_run / "results.json").read_text())["results"]["lora"]
    for key in ("bbox/AP", "segm/AP", "bbox/AP50", "segm/APm"):
        assert result["metrics"][key] == pytest.approx(final[key], abs=1e-9)
    assert set(result["per_category"]["segm"]) == set(toy.CATEGORIES)  # held-out splits prompt every concept
    assert (trained_run / "eval_test.json").is_file()
    text = (trained_run / "eval_test.txt").read_text()
    assert "AP50" in text and "triangle" in text

    base = evaluate_cmd.evaluate(compose_command("evaluate", run_dir=trained_run, base=True, num_workers=0))
    scored_before_training = json.loads((trained_run / "heldout_target.json").read_text())["base"]
    assert base["metrics"]["segm/AP"] == pytest.approx(scored_before_training["segm/AP"], abs=1e-9)
    assert (trained_run / "eval_test_base.json").is_file()


def test_merged_export_loads_through_sam3_loader_with_same_predictions(trained_run, tmp_path):
    out = export_cmd.export(compose_command("export", run_dir=trained_run, output=tmp_path / "merged.pt"))
    tuned = load_tuned(OmegaConf.create({"run_dir": str(trained_run), "adapter": None, "base": False}))
    # sam3's own loader (_load_checkpoint strips 'detector.'), on a stock model: no LoRA layers at all.
    merged = build_model("tiny", checkpoint_path=str(out))
    assert not any("lora" in n for n, _ in merged.named_parameters())
    batch = make_batch(112, 2, seed=11)
    _assert_same_predictions(_outputs(merged, batch), _outputs(tuned.model, batch))
    ckpt = torch.load(out, weights_only=False)
    assert all(k.startswith("detector.") for k in ckpt["model"])
    with pytest.raises(OutputError, match="already exists.*overwrite=true"):  # never overwritten silently
        export_cmd.export(compose_command("export", run_dir=trained_run, output=out))


def test_merged_inference_gives_the_unmerged_predictions(trained_run):
    def tuned(merge):
        return load_tuned(OmegaConf.create({"run_dir": str(trained_run), "adapter": None, "merge": merge}))

    merged, unmerged = tuned(True), tuned(False)
    assert all(m.merged for _, m in lora_modules(merged.model)) and not any(
        m.merged for _, m in lora_modules(unmerged.model)
    )
    batch = make_batch(112, 2, seed=11)
    _assert_same_predictions(_outputs(merged.model, batch), _outputs(unmerged.model, batch))


def test_peft_export_reproduces_outputs_with_peft(linear_only_run, tmp_path):
    peft = pytest.importorskip("peft")
    out = export_cmd.export(compose_command("export", run_dir=linear_only_run, format="peft", output=tmp_path / "peft"))
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["rank_pattern"]  # packed qkv: block-structured, rank 3r
    tuned = load_tuned(OmegaConf.create({"run_dir": str(linear_only_run), "adapter": None, "base": False}))
    torch.manual_seed(0)  # the run's seed: the same random tiny base
    base = build_model("tiny")
    peft_model = peft.PeftModel.from_pretrained(base, str(out))
    batch = make_batch(112, 2, seed=12)
    _assert_same_predictions(_outputs(peft_model.base_model.model, batch), _outputs(tuned.model, batch))


def test_peft_export_refuses_attention_updates_and_writes_nothing(trained_run, tmp_path):
    with pytest.raises(PeftExportError, match="no exact PEFT form.*self_attn.*format=merged"):
        export_cmd.export(compose_command("export", run_dir=trained_run, format="peft", output=tmp_path / "p"))
    assert not (tmp_path / "p").exists()
    export_cmd.export(
        compose_command(
            "export", run_dir=trained_run, format="peft", output=tmp_path / "p", **{"peft.allow_partial": True}
        )
    )
    assert (tmp_path / "p" / "adapter_model.safetensors").is_file()


def test_predict_writes_overlays_and_coco_json(trained_run, toy_root, tmp_path):
    out = predict_cmd.run(
        compose_command(
            "predict",
            run_dir=trained_run,
            images=toy_root / "test",
            score_threshold=0.0,
            max_dets=3,
            output=tmp_path / "pred",
        )
    )
    overlays = sorted(out.glob("*_overlay.png"))
    assert len(overlays) == 4
    original = np.asarray(Image.open(toy_root / "test" / "test_0000.png").convert("RGB"))
    drawn = np.asarray(Image.open(overlays[0]))
    assert drawn.shape == original.shape and (drawn != original).any(axis=-1).mean() > 0.01
    coco = COCO(str(out / "predictions.coco.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(toy.DOMAIN_CONCEPTS["shifted"])  # training's
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) == 12 and all(0 <= a["score"] <= 1 for a in anns)
    assert coco.annToMask(anns[0]).shape == original.shape[:2]


def test_predict_with_stop_on_error_refuses_undecodable_images_before_writing(trained_run, toy_root, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.open(toy_root / "test" / "test_0000.png").save(folder / "good.png")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "sam3_lora.predict",
            f"run_dir={trained_run}",
            f"images={folder}",
            f"output={tmp_path / 'out'}",
            "stop_on_error=true",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert "broken.png" in res.stdout + res.stderr and "cannot be decoded" in res.stdout + res.stderr
    assert not (tmp_path / "out").exists()


def test_predict_never_writes_into_an_existing_output(trained_run, toy_root, tmp_path):
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "keep.txt").write_text("earlier results")
    with pytest.raises(OutputError, match="already exists.*overwrite=true"):
        predict_cmd.run(
            compose_command("predict", run_dir=trained_run, images=toy_root / "test", output=tmp_path / "pred")
        )
    assert [p.name for p in (tmp_path / "pred").iterdir()] == ["keep.txt"]


def test_adapter_for_another_base_or_corrupt_is_refused(trained_run, tmp_path):
    with pytest.raises(AdapterError, match="trained on base model 'tiny'"):
        export_cmd.export(
            compose_command(
                "export",
                model="sam3_medium",
                adapter=trained_run / "adapter_best.safetensors",
                output=tmp_path / "m.pt",
            )
        )
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes((trained_run / "adapter_best.safetensors").read_bytes()[:500])
    with pytest.raises(AdapterError, match="not a readable safetensors adapter"):
        load_adapter(build_model("tiny"), corrupt)
    assert not (tmp_path / "m.pt").exists()


def test_missing_checkpoint_and_missing_run_dir(tmp_path):
    from sam3_lora.core.errors import find_user_error
    from sam3_lora.models import BaseCheckpointError

    with pytest.raises(Exception) as info:  # Hydra wraps errors raised while instantiating
        export_cmd.export(
            compose_command(
                "export",
                adapter=tmp_path / "a.safetensors",
                output=tmp_path / "m.pt",
                **{"model.checkpoint_path": tmp_path / "sam3.pt"},
            )
        )
    cause = find_user_error(info.value)  # what the command line reports, exit code 2
    assert isinstance(cause, BaseCheckpointError) and "SAM3 checkpoint not found" in str(cause)
    with pytest.raises(RunDirError, match="not a training run directory"):
        evaluate_cmd.evaluate(compose_command("evaluate", run_dir=tmp_path))


def test_describe_explains_an_adapter(trained_run, capsys, tmp_path):
    assert describe_cmd.main([str(trained_run / "adapter_best.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "base model: tiny" in out and "LoRA: rank 8, alpha 16" in out and "sam3 0.1.4" in out
    assert "adapted modules: 22 (vision 8, encoder 4, decoder 10)" in out
    (tmp_path / "x.safetensors").write_bytes(b"junk")
    assert describe_cmd.main([str(tmp_path / "x.safetensors")]) == 2
