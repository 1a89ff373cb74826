"""A run stopped and resumed is the same run, bit for bit on CPU: the same losses at every step and
the same adapter as the run that was never stopped, at stops mid-epoch (with loader workers and
without), at an epoch's last step and between epochs."""

import signal

import pytest
import torch
from conftest import tiny_run_overrides, train_in_process

from sam3_lora.training import checkpoint as ckpt
from sam3_lora.training.guards import Preempted
from sam3_lora.training.trainer import Trainer

# 4 images, one a batch: 4 steps an epoch. Every random stream in play: flips, resizes and pads
# (the workers' or the main process's python RNG), hard negatives (random.sample), LoRA dropout
# (torch), the sampler's shuffle and the workers' seeds (torch, once an epoch).
RANDOM_RUN = (
    "trainer.batch_size=1",
    "trainer.max_epochs=2",
    "dataset.augment.hflip=0.5",
    "dataset.augment.scale_min=0.5",
    "dataset.num_hard_negatives=1",
    "lora.dropout=0.1",
)


def _overrides(toy_root, workers):
    return tiny_run_overrides(toy_root, *RANDOM_RUN, f"trainer.num_workers={workers}")


def _record_losses(patch):
    """Every labelled micro-batch's loss, in the order trained, appended to the list returned."""
    seen = []
    original = Trainer._labelled_loss

    def recorded(self, batch):
        out = original(self, batch)
        seen.append(out[1].item())
        return out

    patch.setattr(Trainer, "_labelled_loss", recorded)
    return seen


def _stop_after_step(monkeypatch, step):
    """A stop signal (SIGTERM, as SLURM sends) arriving during optimizer step ``step``."""
    original = Trainer._optimizer_step

    def step_then_signal(self):
        original(self)
        if self.step == step:
            self.interruptions.received = signal.SIGTERM

    monkeypatch.setattr(Trainer, "_optimizer_step", step_then_signal)
    return original


def _stop_before_epoch(monkeypatch, epoch):
    """The job killed as epoch ``epoch`` starts, after the previous epoch's checkpoint."""
    original = Trainer.train_epoch

    def killed(self):
        if self.epoch == epoch:
            raise KeyboardInterrupt("simulated kill")
        return original(self)

    monkeypatch.setattr(Trainer, "train_epoch", killed)
    return original


def _trainable(run_dir):
    return ckpt.load(run_dir / ckpt.CHECKPOINT_DIR / ckpt.LAST)["trainable"]


_uninterrupted = {}


def _uninterrupted_run(toy_root, tmp_path_factory, workers):
    """The run never stopped (one per worker count, shared by the tests): its losses and adapter."""
    if workers not in _uninterrupted:
        with pytest.MonkeyPatch.context() as patch:
            seen = _record_losses(patch)
            run_dir = tmp_path_factory.mktemp(f"uninterrupted_{workers}")
            train_in_process(_overrides(toy_root, workers), run_dir)
        _uninterrupted[workers] = (seen, _trainable(run_dir))
    return _uninterrupted[workers]


@pytest.mark.parametrize(
    "workers, stop",
    [
        pytest.param(2, ("step", 1), id="mid-epoch-1-of-4-workers"),  # an odd position: workers take turns
        pytest.param(2, ("step", 6), id="mid-epoch-2-workers"),
        pytest.param(2, ("step", 4), id="last-step-of-epoch-workers"),
        pytest.param(2, ("epoch", 1), id="between-epochs-workers"),
        pytest.param(0, ("step", 3), id="mid-epoch-no-workers"),
    ],
)
def test_stopped_and_resumed_run_is_bit_identical(toy_root, tmp_path, tmp_path_factory, monkeypatch, workers, stop):
    expected_losses, expected = _uninterrupted_run(toy_root, tmp_path_factory, workers)
    losses = _record_losses(monkeypatch)
    overrides = _overrides(toy_root, workers)
    kind, at = stop
    if kind == "step":
        original = _stop_after_step(monkeypatch, at)
        with pytest.raises(Preempted):
            train_in_process(overrides, tmp_path)
        monkeypatch.setattr(Trainer, "_optimizer_step", original)
    else:
        original = _stop_before_epoch(monkeypatch, at)
        with pytest.raises(KeyboardInterrupt):
            train_in_process(overrides, tmp_path)
        monkeypatch.setattr(Trainer, "train_epoch", original)
    stopped_after = len(losses)
    train_in_process(overrides, tmp_path)  # the same command again: resumes from last.pt

    assert stopped_after == (at if kind == "step" else 4 * at)
    assert losses == expected_losses, f"stopped after {stopped_after} batches: {losses} != {expected_losses}"
    got = _trainable(tmp_path)
    assert got.keys() == expected.keys()
    differ = [k for k in expected if not torch.equal(got[k], expected[k])]
    assert not differ, f"{len(differ)} of {len(expected)} trainable tensors differ, e.g. {differ[:2]}"
