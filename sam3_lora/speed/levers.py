"""The speed levers applied together, as ``trainer.text_cache / base_dtype / compile /
activation_checkpointing`` ask, before a trainer is built (``train`` and ``tools/bench.py`` both go
through here)."""

from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn

from sam3_lora.speed.compiled_blocks import compile_vit_blocks
from sam3_lora.speed.frozen_precision import hold_frozen_weights_in
from sam3_lora.speed.text_cache import TextEncodingCache, install_text_cache

log = logging.getLogger(__name__)


def apply_speed_levers(
    model: nn.Module,
    *,
    text_cache: bool,
    base_dtype: Optional[torch.dtype],
    compile: bool,
    activation_checkpointing: bool = False,
) -> Optional[TextEncodingCache]:
    """Apply each lever asked for, in place (call before moving the model to the GPU: a bf16 base
    moves half the bytes); returns the text cache when there is one (it steps aside by itself
    while the text encoder trains)."""
    if base_dtype is not None:
        saved = hold_frozen_weights_in(model, base_dtype)
        log.info("frozen backbone weights held in %s: %.2f GB less", base_dtype, saved / 1e9)
    cache = install_text_cache(model) if text_cache else None
    if compile:
        log.info("torch.compile: %d ViT blocks (compiled at the first step)", compile_vit_blocks(model))
    set_activation_checkpointing(model, activation_checkpointing)
    return cache


def set_activation_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Recompute the ViT blocks in backward (sam3's own ``use_act_checkpoint``): less memory, more time."""
    trunk = getattr(getattr(getattr(model, "backbone", None), "vision_backbone", None), "trunk", None)
    if trunk is not None and hasattr(trunk, "use_act_checkpoint"):
        trunk.use_act_checkpoint = enabled
