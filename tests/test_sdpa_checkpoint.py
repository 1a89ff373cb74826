"""The text encoder's activation checkpointing recomputes under the forward's attention kernels.

On CUDA, sam3's text encoder crashed in backward because its forward runs inside an
``sdpa_kernel`` restriction that the recompute no longer sees (sam3_lora/sam3_compat/sdpa_checkpoint.py).
On CPU the same mechanism is triggered by restricting the backends further around the step:
inside, sam3 re-enables flash attention for its forward, outside it the recompute would run
the math kernel.
"""

import pytest
import torch
import torch.utils.checkpoint
from sam3.model import text_encoder_ve
from synthetic import make_batch
from torch.nn.attention import SDPBackend, sdpa_kernel

from sam3_lora.sam3_compat.sdpa_checkpoint import checkpoint, enabled_sdpa_backends
from sam3_lora.training.loss import build_sam3_loss, compute_loss, core_loss


def _text_transformer(model):
    return model.backbone.language_backbone.encoder.transformer


def _text_gradients(model, batch, checkpointing: bool):
    """Every text-encoder gradient of one real-loss step, under a math-only outer restriction."""
    model.zero_grad(set_to_none=True)
    model.train()
    _text_transformer(model).grad_checkpointing = checkpointing
    with sdpa_kernel(SDPBackend.MATH):
        loss = core_loss(compute_loss(model, build_sam3_loss(num_queries=20), batch))
        loss.backward()
    return {n: p.grad.clone() for n, p in model.backbone.language_backbone.named_parameters() if p.grad is not None}


def test_enabled_backends_follow_sdpa_kernel():
    with sdpa_kernel([SDPBackend.MATH, SDPBackend.FLASH_ATTENTION]):
        assert set(enabled_sdpa_backends()) == {SDPBackend.MATH, SDPBackend.FLASH_ATTENTION}
    with sdpa_kernel(SDPBackend.MATH):
        assert enabled_sdpa_backends() == [SDPBackend.MATH]


def test_stock_checkpoint_breaks_when_the_recompute_leaves_the_forwards_kernel_context():
    """The root cause on its own: torch restores RNG and autocast for the recompute, not SDPA's backends."""
    torch.manual_seed(0)
    block = text_encoder_ve.ResidualAttentionBlock(64, 4)
    x = torch.randn(3, 32, 64, requires_grad=True)
    mask = torch.full((32, 32), float("-inf")).triu_(1)

    def run(ckpt):
        with sdpa_kernel(SDPBackend.MATH):  # the recompute (backward, below) runs outside this
            y = ckpt(block, x, None, None, mask, use_reentrant=False)
        y.sum().backward()

    with pytest.raises(torch.utils.checkpoint.CheckpointError, match="different metadata"):
        run(torch.utils.checkpoint.checkpoint)
    x.grad = None
    run(checkpoint)
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_tiny_model_text_encoder_trains_with_checkpointing_and_equal_gradients(tiny_model):
    """Full fine-tuning of the tiny SAM3 (text encoder trainable): checkpointed gradients are
    those without checkpointing; the stock checkpoint fails the same step."""
    assert text_encoder_ve.checkpoint is checkpoint  # installed when the model was built
    batch = make_batch(112, 2, seed=0)
    torch.manual_seed(0)
    plain = _text_gradients(tiny_model, batch, checkpointing=False)
    torch.manual_seed(0)
    recomputed = _text_gradients(tiny_model, batch, checkpointing=True)
    assert plain.keys() == recomputed.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_stock_checkpoint_fails_the_same_tiny_model_step(tiny_model, monkeypatch):
    """Control for the test above: without the fix the same step raises, so that test can fail."""
    monkeypatch.setattr(text_encoder_ve, "checkpoint", torch.utils.checkpoint.checkpoint)
    with pytest.raises(torch.utils.checkpoint.CheckpointError):
        _text_gradients(tiny_model, make_batch(112, 2, seed=0), checkpointing=True)
