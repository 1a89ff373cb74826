"""Activation checkpointing that recomputes under the attention kernels its forward used.

Why sam3 0.1.4's text encoder crashed in backward on CUDA (``CheckpointError: Recomputed
values ... have different metadata``) whenever it had trainable weights:

* ``VETextEncoder`` runs inside ``sdpa_kernel([MATH, EFFICIENT_ATTENTION, FLASH_ATTENTION])``
  (``vl_combiner.SAM3VLBackbone._forward_text_no_ack_ckpt``): cuDNN attention is switched off
  for the forward.
* Its ``Transformer`` checkpoints every resblock with ``torch.utils.checkpoint(...,
  use_reentrant=False)``. The recompute happens in backward, long after that ``with`` block
  has exited, so scaled-dot-product attention chooses its kernel from the global defaults.
* torch's checkpoint restores the RNG and autocast state for the recompute, but not the SDPA
  backend flags. With a float causal mask the forward runs the memory-efficient kernel (it
  saves the mask expanded to ``[batch, heads, L, L]`` and a CPU seed/offset); where cuDNN
  attention is enabled and preferred (recent torch on Hopper GPUs) the recompute runs that
  instead (the mask as given, ``[1, 1, L, L]``, and a GPU seed/offset): other saved tensors,
  hence the error. On CPU the restricted and default sets pick the same kernel, which is why
  no CPU run showed it; restricting the forward further on CPU (``sdpa_kernel(MATH)``)
  reproduces it there, and ``tests/test_sdpa_checkpoint.py`` does exactly that.

The fix: :func:`checkpoint` records the enabled backends when the forward runs and
recomputes under exactly those (``context_fn``). :func:`install` hands it to sam3's text
encoder module in place of torch's, so checkpointing (and its memory saving) stays on.
Anything else about checkpointing is torch's own.
"""

from __future__ import annotations

import contextlib
from typing import List

import torch
import torch.utils.checkpoint
from torch.nn.attention import SDPBackend, sdpa_kernel

# The global switches sdpa_kernel() sets, by backend (public getters; torch >= 2.5).
_BACKEND_ENABLED = {
    SDPBackend.FLASH_ATTENTION: torch.backends.cuda.flash_sdp_enabled,
    SDPBackend.EFFICIENT_ATTENTION: torch.backends.cuda.mem_efficient_sdp_enabled,
    SDPBackend.MATH: torch.backends.cuda.math_sdp_enabled,
    SDPBackend.CUDNN_ATTENTION: torch.backends.cuda.cudnn_sdp_enabled,
}


def enabled_sdpa_backends() -> List[SDPBackend]:
    """The scaled-dot-product attention backends allowed right now (inside any sdpa_kernel)."""
    return [backend for backend, enabled in _BACKEND_ENABLED.items() if enabled()]


def checkpoint(function, *args, **kwargs):
    """``torch.utils.checkpoint.checkpoint`` whose recompute sees the forward's SDPA backends."""
    if kwargs.get("use_reentrant", True) or "context_fn" in kwargs:
        # The reentrant variant takes no context_fn; a caller's own context_fn is left alone.
        return torch.utils.checkpoint.checkpoint(function, *args, **kwargs)
    backends = enabled_sdpa_backends()

    def contexts():
        return contextlib.nullcontext(), sdpa_kernel(backends)

    return torch.utils.checkpoint.checkpoint(function, *args, context_fn=contexts, **kwargs)


_installed = False


def install() -> None:
    """Make sam3's text encoder checkpoint through :func:`checkpoint` (once per process)."""
    global _installed
    if _installed:
        return
    from sam3.model import text_encoder_ve

    text_encoder_ve.checkpoint = checkpoint
    _installed = True
