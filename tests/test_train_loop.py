"""The trainer end to end on the tiny model and toy data: learning, checkpoints, resume, logs."""

import json

import pytest
import torch
from conftest import compose_train, tiny_run_overrides, train_interrupted_then_resumed
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from wandb_records import history

from sam3_lora.lora import read_adapter
from sam3_lora.train import run
from sam3_lora.training import checkpoint as ckpt


def _train(toy_root, run_dir, *extra):
    return run(compose_train(tiny_run_overrides(toy_root, *extra)), run_dir)


def _scalars(run_dir, tag):
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_short_run_lowers_loss_and_checkpoints_hold_only_the_adapter(toy_root, tmp_path):
    summary = _train(
        toy_root, tmp_path, "trainer.max_epochs=8", "logger=tensorboard", "lora=balanced", "lora.targets=[all]"
    )
    losses = [v for _, v in _scalars(tmp_path, "train/loss")]
    assert len(losses) == 8 and losses[-1] < 0.9 * losses[0], losses

    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    trainable = state["trainable"]
    assert all(".lora." in k for k in trainable), [k for k in trainable if ".lora." not in k][:3]
    assert sum(v.numel() for v in trainable.values()) == summary["trainable_parameters"]
    assert {"optimizer", "scheduler", "scaler", "rng", "epoch", "step"} <= set(state)
    assert state["epoch"] == 8 and state["step"] == 8
    assert (tmp_path / "checkpoints" / "best.pt").is_file()
    info, tensors = read_adapter(tmp_path / "adapter_best.safetensors")
    assert set(tensors) == set(trainable) and info.base_model == "tiny"
    # An adapter checkpoint is a small fraction of the 4.3M-parameter model.
    assert summary["trainable_parameters"] < 0.05 * 4.3e6


def test_resumed_run_matches_an_uninterrupted_one(toy_root, tmp_path, monkeypatch):
    extra = ("trainer.max_epochs=3", "lora.dropout=0.1")  # dropout: the RNG state must resume too
    _train(toy_root, tmp_path / "straight", *extra)

    train_interrupted_then_resumed(tiny_run_overrides(toy_root, *extra), tmp_path / "resumed", monkeypatch)

    a = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    b = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert [m["step"] for m in a] == [m["step"] for m in b] == [1, 2, 3]
    for x, y in zip(a, b):
        assert x["bbox/AP"] == pytest.approx(y["bbox/AP"], abs=1e-6) and x["segm/AP"] == pytest.approx(
            y["segm/AP"], abs=1e-6
        )
    wa = load_file(tmp_path / "straight" / "adapter_last.safetensors")
    wb = load_file(tmp_path / "resumed" / "adapter_last.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)

    # Timing spans both sessions; running the finished run again only re-scores it and keeps that timing.
    assert ckpt.load(tmp_path / "resumed" / "checkpoints" / "last.pt")["timing"]["steps"] == 3
    timed = json.loads((tmp_path / "resumed" / "results.json").read_text())["step_time_s"]
    assert timed > 0
    again = _train(toy_root, tmp_path / "resumed", *extra)
    assert again["step_time_s"] == timed


def test_tensorboard_and_wandb_files_hold_the_logged_metrics(toy_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    _train(toy_root, tmp_path, "logger=all", "logger.wandb.tags=[toy]", "logger.wandb.group=g1")
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/images_per_s", "val/bbox/AP", "val/segm/AP"} <= tags
    assert any("hparams" in t for t in acc.Tags().get("tensors", [])) or acc.PluginTagToContent("hparams")
    tb_ap = dict(_scalars(tmp_path, "val/bbox/AP"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert tb_ap[metrics[-1]["step"]] == pytest.approx(metrics[-1]["bbox/AP"], abs=1e-6)

    run_id = (tmp_path / "wandb_run_id").read_text()
    files = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 1
    rows = history(files[0])
    assert any("train/loss" in r for r in rows) and any("val/bbox/AP" in r for r in rows)
    wandb_ap = [r["val/bbox/AP"] for r in rows if "val/bbox/AP" in r]
    assert wandb_ap[-1] == pytest.approx(metrics[-1]["bbox/AP"], abs=1e-6)

    # A resumed run (same directory) continues the same wandb run.
    _train(toy_root, tmp_path, "logger=all", "trainer.max_epochs=3")
    assert (tmp_path / "wandb_run_id").read_text() == run_id
    assert len(list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))) >= 1


def test_full_finetuning_baseline_trains_everything(toy_root, tmp_path):
    summary = _train(toy_root, tmp_path, "lora=none", "trainer.max_epochs=1")
    assert summary["trainable_parameters"] > 4e6
    assert (tmp_path / "model_last.pt").is_file()


def test_gradient_accumulation_counts_optimizer_steps(toy_root, tmp_path):
    _train(toy_root, tmp_path, "trainer.batch_size=1", "trainer.grad_accum=2", "trainer.max_epochs=1")
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == 2  # 4 images, 1 per batch, 2 batches per optimizer step
    assert state["scheduler"]["last_epoch"] == 2


def test_final_eval_split_chooses_the_held_out_split(toy_root, tmp_path):
    summary = _train(toy_root, tmp_path, "trainer.max_epochs=1", "final_eval.split=valid")
    assert summary["heldout_split"] == "valid"
    # One epoch: the best adapter is that epoch's, so its final score is the validation score.
    validation = json.loads((tmp_path / "metrics.json").read_text())[-1]
    assert summary["results"]["lora"]["segm/AP"] == pytest.approx(validation["segm/AP"], abs=1e-9)
