"""Bad situations during training never lose work and say what to do."""

import errno

import pytest
import torch
from conftest import compose_train, tiny_run_overrides

import sam3_lora.training.trainer as trainer_module
from sam3_lora.core.atomic_files import WriteError, atomic_save
from sam3_lora.train import run
from sam3_lora.training.checkpoint import CheckpointError
from sam3_lora.training.trainer import NonFiniteLossError


def _train(toy_root, run_dir, *extra):
    return run(compose_train(tiny_run_overrides(toy_root, *extra)), run_dir)


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"step": 1}, path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(WriteError, match="No space left on device.*previous last.pt is intact"):
        atomic_save({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_nan_loss_skips_batches_then_stops_with_advice(toy_root, tmp_path, monkeypatch):
    real = trainer_module.core_loss
    calls = {"n": 0}

    def sometimes_nan(losses):
        calls["n"] += 1
        return real(losses) * float("nan") if calls["n"] > 2 else real(losses)

    monkeypatch.setattr(trainer_module, "core_loss", sometimes_nan)
    with pytest.raises(NonFiniteLossError, match=r"NaN/inf for 5 consecutive batches.*checkpoints.*optimizer.lr"):
        _train(toy_root, tmp_path, "trainer.batch_size=1", "trainer.max_epochs=3")
    assert calls["n"] == 2 + 5  # 2 good batches, then 5 NaN in a row across the epoch boundary
    # The epoch that finished before divergence was checkpointed and is intact.
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 1


def test_resume_from_a_missing_checkpoint_is_an_error(toy_root, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        _train(toy_root, tmp_path, f"trainer.resume={tmp_path / 'nope.pt'}")


def test_resume_with_another_lora_layout_is_refused(toy_root, tmp_path):
    _train(toy_root, tmp_path, "trainer.max_epochs=1", "lora.rank=4")
    with pytest.raises(CheckpointError, match=r"other settings.*\n  lora\.rank: 4 -> 8"):
        _train(toy_root, tmp_path, "trainer.max_epochs=2", "lora.rank=8")
