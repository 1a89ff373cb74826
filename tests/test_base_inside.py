"""The base inside the adapter: adapters off, the adapter's scale, concept routing, and the trade-off
command that scans the scale."""

import copy
import json

import pytest
import torch
from conftest import compose_command, tiny_run_overrides, train_in_process
from omegaconf import OmegaConf
from synthetic import final_outputs, make_batch, randomize_lora

from sam3_lora import export as export_cmd
from sam3_lora import predict as predict_cmd
from sam3_lora import tradeoff as tradeoff_cmd
from sam3_lora.data import toy
from sam3_lora.evaluation.detections import predict
from sam3_lora.lora import LoraConfig, adapter_scale, adapters_off, inject_lora, merge_lora, set_adapter_scale
from sam3_lora.models import build_model
from sam3_lora.pipeline.tuned import load_tuned

KEYS = ("pred_logits", "pred_boxes", "pred_masks")


def _outputs(model, batch):
    model.eval()
    with torch.no_grad():
        return final_outputs(model(batch))


def _max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in KEYS)


@pytest.fixture
def base_and_tuned(tiny_model):
    """An un-injected copy of the base, and the same base with a non-zero adapter everywhere. The copy
    is frozen like the injected model's base weights: torch's nn.MultiheadAttention takes its fused
    fast path only when no weight requires a gradient (even under no_grad), which rounds differently."""
    base = copy.deepcopy(tiny_model).requires_grad_(False)
    inject_lora(tiny_model, LoraConfig(rank=4, alpha=8, targets=["all"], parts=["all"]))
    randomize_lora(tiny_model)
    return base, tiny_model


def test_adapters_off_give_the_base_outputs_and_come_back_on(base_and_tuned):
    base, tuned = base_and_tuned
    batch = make_batch(112, 2, seed=3)
    want_base, want_tuned = _outputs(base, batch), _outputs(tuned, batch)
    assert _max_diff(want_tuned, want_base) > 1e-3  # the adapter does change the outputs (the test can fail)
    weights = {n: p.detach().clone() for n, p in tuned.named_parameters()}
    with adapters_off(tuned):
        assert _max_diff(_outputs(tuned, batch), want_base) < 1e-6
    assert all(torch.equal(p, weights[n]) for n, p in tuned.named_parameters())  # nothing copied or changed
    assert _max_diff(_outputs(tuned, batch), want_tuned) == 0.0


@pytest.mark.parametrize("merged", [False, True], ids=["unmerged", "merged"])
def test_scale_zero_is_the_base_and_one_the_tuned_model(base_and_tuned, merged):
    base, tuned = base_and_tuned
    batch = make_batch(112, 2, seed=4)
    want_base, want_tuned = _outputs(base, batch), _outputs(tuned, batch)
    if merged:
        merge_lora(tuned)
    tol = 1e-6 if not merged else 1e-5  # merging adds and subtracts the updates in place: rounding
    set_adapter_scale(tuned, 0.0)
    assert adapter_scale(tuned) == 0.0 and _max_diff(_outputs(tuned, batch), want_base) < tol
    set_adapter_scale(tuned, 1.0)
    assert _max_diff(_outputs(tuned, batch), want_tuned) < tol
    set_adapter_scale(tuned, 0.5)  # in between: neither end
    half = _outputs(tuned, batch)
    assert _max_diff(half, want_base) > 1e-4 and _max_diff(half, want_tuned) > 1e-4


@pytest.fixture(scope="module")
def run(toy_root, tmp_path_factory):
    """A finished LoRA run of the tiny model (balanced: the trunk is adapted)."""
    run_dir = tmp_path_factory.mktemp("run")
    train_in_process(tiny_run_overrides(toy_root, "trainer.max_epochs=2"), run_dir)
    return run_dir


def test_a_merged_export_at_a_scale_equals_the_unmerged_model_at_that_scale(run, tmp_path):
    out = export_cmd.export(compose_command("export", run_dir=run, output=tmp_path / "half.pt", adapter_scale=0.5))
    merged = build_model("tiny", checkpoint_path=str(out))
    half = load_tuned(OmegaConf.create({"run_dir": str(run), "adapter": None, "adapter_scale": 0.5}))
    full = load_tuned(OmegaConf.create({"run_dir": str(run), "adapter": None}))
    batch = make_batch(112, 2, seed=5)
    assert _max_diff(_outputs(merged, batch), _outputs(half.model, batch)) < 1e-4
    assert _max_diff(_outputs(merged, batch), _outputs(full.model, batch)) > 1e-3
    card = out.with_suffix(".README.md").read_text()
    assert "Merged at adapter scale 0.5" in card
    with pytest.raises(export_cmd.ExportError, match="adapter_scale=0.5 with format=peft"):
        export_cmd.export(
            compose_command("export", run_dir=run, output=tmp_path / "p", format="peft", adapter_scale=0.5)
        )


def _by_category(detections):
    found = {}
    for d in detections:
        found.setdefault(d["category_id"], []).append((round(d["score"], 6), [round(v, 3) for v in d["bbox"]]))
    return {k: sorted(v) for k, v in found.items()}


@pytest.mark.parametrize("parts", [["vision", "encoder", "decoder"], ["encoder", "decoder"]], ids=["trunk", "heads"])
def test_routing_answers_untuned_prompts_with_the_base_and_tuned_ones_with_the_adapter(tiny_model, parts, monkeypatch):
    base = copy.deepcopy(tiny_model).eval().requires_grad_(False)  # frozen as the injected base (see above)
    inject_lora(tiny_model, LoraConfig(rank=4, alpha=8, parts=parts))
    randomize_lora(tiny_model, seed=2)
    tuned = tiny_model.eval()
    batches = [make_batch(112, 2, seed=6)]  # prompts: square (category 1), circle (category 2)
    cpu = torch.device("cpu")
    want_tuned, want_base = (_by_category(predict(m, batches, cpu, score_threshold=0.0)) for m in (tuned, base))
    assert want_tuned[1] != want_base[1]  # the adapter changes square's answers (the test can fail)
    trunk = tuned.backbone.vision_backbone.trunk
    calls = {"n": 0}
    real = type(trunk).forward

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(trunk), "forward", counted)
    routed = _by_category(predict(tuned, batches, cpu, score_threshold=0.0, base_for={2}))
    assert routed[1] == want_tuned[1] and routed[2] == want_base[2]
    # the trunk runs twice only when it holds adapters; otherwise its output is reused
    assert calls["n"] == (2 if "vision" in parts else 1)


def test_predict_and_evaluate_route_concepts_the_run_was_not_trained_on(run, toy_root, tmp_path):
    from sam3_lora import evaluate as evaluate_cmd

    trained = sorted(toy.DOMAIN_CONCEPTS["shifted"])
    out = predict_cmd.run(
        compose_command(
            "predict",
            run_dir=run,
            images=toy_root / "test",
            output=tmp_path / "p",
            concept_routing=True,
            prompts="[circle,triangle]",
        )
    )
    info = json.loads((out / "predictions.coco.json").read_text())["info"]
    assert info["answered_by_the_base"] == ["triangle"] and "triangle" not in trained
    result = evaluate_cmd.evaluate(
        compose_command("evaluate", run_dir=run, num_workers=0, concept_routing=True, output=tmp_path / "e")
    )
    assert result["concept_routing"] == trained
    plain = evaluate_cmd.evaluate(compose_command("evaluate", run_dir=run, num_workers=0, output=tmp_path / "e2"))
    # the tuned concepts' figures are the tuned model's either way; triangle's are the base's when routed
    for name in trained:
        assert result["per_category"]["segm"][name] == pytest.approx(plain["per_category"]["segm"][name], abs=1e-9)
    base = evaluate_cmd.evaluate(
        compose_command("evaluate", run_dir=run, num_workers=0, base=True, output=tmp_path / "b")
    )
    assert result["per_category"]["segm"]["triangle"] == pytest.approx(
        base["per_category"]["segm"]["triangle"], abs=1e-9
    )


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    """The quick start's job, scaled down: the shipped toy base, LoRA on the shifted domain, retention."""
    root = tmp_path_factory.mktemp("quickstart")
    overrides = [
        "experiment=quickstart",
        f"dataset.root={root / 'shifted'}",
        "dataset.generate.splits={train: 16, valid: 8, test: 8}",
        f"retention.root={root / 'base'}",
        "retention.generate.splits={train: 0, valid: 8, test: 8}",
        "trainer.max_epochs=2",
        "trainer.num_workers=0",
        "logger=none",
    ]
    train_in_process(overrides, root / "run")
    return root / "run"


def test_the_tradeoff_command_scans_the_scale_and_chooses_on_valid_within_the_budget(quickstart_run, tmp_path):
    budget = 0.02
    cfg = compose_command(
        "tradeoff", run_dir=quickstart_run, scales="[0.5,1]", budget=budget, num_workers=0, output=tmp_path
    )
    result = tradeoff_cmd.run(cfg)
    assert [p.scale for p in result.points] == [0.0, 0.5, 1.0]  # the base is always scanned
    assert {p.name for p in tmp_path.iterdir()} == {"tradeoff.json", "tradeoff.csv", "tradeoff.md", "tradeoff.png"}
    drops = {p.scale: result.drop(p) for p in result.points}
    assert drops[0.0] == 0.0 and drops[result.chosen] <= budget
    assert all(drops[s] > budget for s in drops if s > result.chosen)  # the largest scale within the budget
    md = (tmp_path / "tradeoff.md").read_text()
    assert f"| {result.chosen:g} (chosen) |" in md and f"<= {budget:g}" in md
    # scale 0 is the frozen base: its retention figures are the ones training recorded for the base
    recorded = json.loads((quickstart_run / "heldout_retention.json").read_text())["base"]
    assert result.base.retention["segm/AP"] == pytest.approx(recorded["segm/AP"], abs=1e-9)
