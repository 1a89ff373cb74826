"""Frozen base weights held in a lower precision (``trainer.base_dtype=bf16``).

Under bf16 autocast every matrix product casts its fp32 weight to bf16 on each call; holding
the frozen weights in bf16 once saves that cast and half their memory. Only the image and
text backbones (about 95% of SAM3's weights) are cast, and there only the frozen matrices
(linear and attention projections, convolution kernels, embeddings): norms and biases stay
fp32, and so does everything after the backbones — sam3's decoder runs its FFN with autocast
switched off, where a bf16 weight would meet fp32 activations. Trainable weights (LoRA,
``modules_to_save``), their gradients and the optimizer state stay fp32.
"""

from __future__ import annotations

import torch
from torch import nn

from sam3_lora.sam3_compat import module_paths as paths

BACKBONES = (paths.TRUNK, paths.TEXT_BACKBONE)


def hold_frozen_weights_in(model: nn.Module, dtype: torch.dtype) -> int:
    """Cast the backbones' frozen matrices to ``dtype`` in place; returns the bytes saved."""
    saved = 0
    for prefix in BACKBONES:
        try:
            part = model.get_submodule(prefix)
        except AttributeError:
            continue
        for p in part.parameters():
            if p.requires_grad or p.dim() < 2 or p.dtype == dtype:
                continue
            before = p.numel() * p.element_size()
            p.data = p.data.to(dtype)
            saved += before - p.numel() * p.element_size()
    return saved
