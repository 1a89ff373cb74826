"""The order of random draws in a run, pinned: moving a step of the pipeline (model init, base
scoring, LoRA init, loader seeds) changes what a run trains, so it shows here in seconds rather
than as other figures after a ten-minute demo.

The pinned numbers come from this project's own run of the tiny model with the locked
environment (requirements.lock: torch's CPU random streams and kernels); they are a regression
guard, not a result.
"""

import pytest
import torch
from conftest import compose_train, tiny_run_overrides
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sam3_lora.data import toy
from sam3_lora.train import run
from sam3_lora.training.trainer import Trainer

# sum(A), sum(|A|) over every LoRA A matrix, and the first values of one, as the run starts.
PINNED_A_SUM = 14.0964614049
PINNED_A_ABS_SUM = 1713.3981136298
PINNED_A_FIRST = [0.0010351688, -0.0587114245, 0.0399337560, 0.0182191730]
PINNED_A_NAME = "backbone.vision_backbone.trunk.blocks.0.attn.qkv.lora.q.lora_A"
PINNED_FIRST_LOSS = 950.3441772461


@pytest.fixture
def started_state(monkeypatch):
    """The trainable tensors as training starts (after every draw that precedes it)."""
    seen = {}
    fit = Trainer.fit

    def spy(self):
        seen.update({n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad})
        return fit(self)

    monkeypatch.setattr(Trainer, "fit", spy)
    return seen


def test_initial_lora_values_and_first_loss_are_pinned(toy_root, tmp_path, started_state):
    source = toy.generate(tmp_path / "source", domain="base", seed=4, splits={"train": 0, "valid": 2, "test": 2})
    overrides = tiny_run_overrides(
        toy_root,
        "trainer.max_steps=1",
        "trainer.max_epochs=1",
        "logger=tensorboard",
        "final_eval.compare_base=true",  # scoring the base must not move the streams
        "retention=coco",
        f"retention.root={source}",
        "lora.dropout=0.1",  # dropout draws during the step
    )
    run(compose_train(overrides), tmp_path / "run")
    a = {n: t for n, t in started_state.items() if n.endswith("lora_A")}
    assert len(a) == 50
    total = sum(t.double().sum() for t in a.values()).item()
    absolute = sum(t.double().abs().sum() for t in a.values()).item()
    first = a[PINNED_A_NAME].flatten()[:4].tolist()
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    (loss,) = [e.value for e in acc.Scalars("train/loss")]
    measured = dict(a_sum=total, a_abs_sum=absolute, a_first=first, first_loss=loss)
    assert total == pytest.approx(PINNED_A_SUM, rel=1e-6, abs=1e-6), measured
    assert absolute == pytest.approx(PINNED_A_ABS_SUM, rel=1e-7), measured
    assert first == pytest.approx(PINNED_A_FIRST, abs=1e-7), measured
    assert loss == pytest.approx(PINNED_FIRST_LOSS, rel=1e-5), measured
    assert all(torch.isfinite(t).all() for t in started_state.values())
