"""The ``model`` config group's builders: the stock full-size SAM3 and the same classes at small sizes.

``build_sam3`` is Meta's own ``sam3.model_builder.build_sam3_image_model`` with the checkpoint
resolved here (a local ``sam3.pt``, or the hub when asked); ``build_model`` picks it or a named size.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from torch import nn

from sam3_lora.models.assembly import build_sam3_sized, default_bpe_path, init_text_encoder
from sam3_lora.models.base_checkpoint import HF_REPO, BaseCheckpointError, load_base_checkpoint, resolve_checkpoint
from sam3_lora.models.sizes import SIZES
from sam3_lora.sam3_compat import cpu as cpu_compat
from sam3_lora.sam3_compat import sdpa_checkpoint
from sam3_lora.sam3_compat.matcher import FinitePredictionsMatcher


def build_sam3(
    checkpoint_path: Optional[str] = None,
    load_from_hub: bool = False,
    random_init: bool = False,
    bpe_path: Optional[str] = None,
    eval_mode: bool = False,
    enable_segmentation: bool = True,
) -> nn.Module:
    """The stock 840M SAM3 image model, through sam3's own builder and loader.

    Without a checkpoint this stops with instructions, unless ``random_init`` is set
    (architecture checks and counting: no weights needed).
    """
    from sam3.model_builder import build_sam3_image_model

    resolved = None if random_init else resolve_checkpoint(checkpoint_path, load_from_hub)
    if resolved is None and not random_init:
        raise BaseCheckpointError(
            "No SAM3 checkpoint configured: set model.checkpoint_path=/path/to/sam3.pt "
            f"(from https://huggingface.co/{HF_REPO}), or model.load_from_hub=true when online."
        )
    sdpa_checkpoint.install()
    with cpu_compat.applied():
        model = build_sam3_image_model(
            bpe_path=bpe_path or default_bpe_path(),
            device="cpu",
            eval_mode=eval_mode,
            checkpoint_path=None,
            load_from_HF=False,
            enable_segmentation=enable_segmentation,
        )
    init_text_encoder(model)
    if model.matcher is not None:  # as build_sam3_sized: NaN predictions named, not sent to scipy
        model.matcher = FinitePredictionsMatcher(model.matcher)
    model.image_size = SIZES["full"].img_size
    if resolved is not None:
        load_base_checkpoint(model, resolved)
    return model


def build_model(
    name: str,
    checkpoint_path: Optional[str] = None,
    load_from_hub: bool = False,
    random_init: bool = False,
    bpe_path: Optional[str] = None,
    eval_mode: bool = False,
    overrides: Optional[dict] = None,
) -> nn.Module:
    """Entry of the ``model`` config group (settings: ``sam3_lora/models/config.py``): ``sam3`` or a
    named size (``overrides``: of that size's numbers)."""
    if name == "sam3":
        return build_sam3(checkpoint_path, load_from_hub, random_init, bpe_path, eval_mode)
    if name not in SIZES:
        raise ValueError(f"unknown model '{name}'; choose one of: sam3, {', '.join(SIZES)}")
    model = build_sam3_sized(dataclasses.replace(SIZES[name], **(overrides or {})), bpe_path, eval_mode)
    if checkpoint_path:
        if not Path(checkpoint_path).exists():
            raise BaseCheckpointError(f"checkpoint for model '{name}' not found at '{checkpoint_path}'")
        load_base_checkpoint(model, resolve_checkpoint(checkpoint_path, load_from_hub=False))
    return model
