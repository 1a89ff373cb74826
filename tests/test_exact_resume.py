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


class Trained(Exception):
    """Training finished: the command stops before scoring the model (half a run's time, and
    nothing this test compares)."""


def _train(overrides, run_dir):
    original = Trainer.fit

    def fit_then_stop(self):
        original(self)
        raise Trained

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "fit", fit_then_stop)
        with pytest.raises(Trained):
            train_in_process(overrides, run_dir)


def _stopped_by_signal_after(step):
    """A stop signal (SIGTERM, as SLURM sends) arriving during optimizer step ``step``: the trainer
    saves a mid-epoch checkpoint at the step's end and raises Preempted."""
    original = Trainer._optimizer_step

    def step_then_signal(self):
        original(self)
        if self.step == step:
            self.interruptions.received = signal.SIGTERM

    return "_optimizer_step", step_then_signal, Preempted


def _killed_before(epoch):
    """The job killed as epoch ``epoch`` starts, after the previous epoch's checkpoint."""
    original = Trainer.train_epoch

    def killed(self):
        if self.epoch == epoch:
            raise KeyboardInterrupt("simulated kill")
        return original(self)

    return "train_epoch", killed, KeyboardInterrupt


def _trainable(run_dir):
    return ckpt.load(run_dir / ckpt.CHECKPOINT_DIR / ckpt.LAST)["trainable"]


# (workers, stops): each stop ends a session, the same command run again resumes; one run directory
# for them all, so a run resumed from a resumed run is tested too, at the price of about one run.
STOPS = [
    pytest.param(
        2,
        [
            ("signal after step", 1),  # mid-epoch, at an odd batch: the two workers take turns
            ("signal after step", 4),  # an epoch's last step: a mid-epoch checkpoint with nothing left
            ("killed before epoch", 1),  # between epochs: the epoch's own checkpoint
            ("signal after step", 6),  # mid-epoch again, in a later epoch
        ],
        id="two-workers",
    ),
    pytest.param(0, [("signal after step", 3), ("signal after step", 6)], id="no-workers"),
]
STOP_KINDS = {"signal after step": _stopped_by_signal_after, "killed before epoch": _killed_before}


@pytest.mark.parametrize("workers, stops", STOPS)
def test_stopped_and_resumed_run_is_bit_identical(toy_root, tmp_path, monkeypatch, workers, stops):
    overrides = tiny_run_overrides(toy_root, *RANDOM_RUN, f"trainer.num_workers={workers}")
    with pytest.MonkeyPatch.context() as patch:
        expected_losses = _record_losses(patch)
        _train(overrides, tmp_path / "uninterrupted")
    expected = _trainable(tmp_path / "uninterrupted")

    losses = _record_losses(monkeypatch)
    stopped_at = []  # batches trained when each session stopped
    for kind, at in stops:
        with pytest.MonkeyPatch.context() as patch:
            name, stopping, raised = STOP_KINDS[kind](at)
            patch.setattr(Trainer, name, stopping)
            with pytest.raises(raised):
                train_in_process(overrides, tmp_path / "stopped")
        stopped_at.append(len(losses))
    _train(overrides, tmp_path / "stopped")  # the same command again: resumes from last.pt

    assert stopped_at == [at if kind == "signal after step" else 4 * at for kind, at in stops]
    first_off = next((i for i, (a, b) in enumerate(zip(losses, expected_losses)) if a != b), None)
    assert losses == expected_losses, (
        f"stopped after batches {stopped_at}: the losses differ from batch {first_off} on\n"
        f"  resumed:       {losses}\n  uninterrupted: {expected_losses}"
    )
    got = _trainable(tmp_path / "stopped")
    assert got.keys() == expected.keys()
    differ = [k for k in expected if not torch.equal(got[k], expected[k])]
    assert not differ, f"{len(differ)} of {len(expected)} trainable tensors differ, e.g. {differ[:2]}"
