"""The model made ready for a run: its device, the trunk cache (when the trunk stays frozen and sees
the same images), the speed levers and activation checkpointing the trainer settings ask for."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Optional

import torch
from torch import nn

from sam3_lora.core.device import resolve_device
from sam3_lora.data.config import DatasetConfig
from sam3_lora.runs import layout
from sam3_lora.sam3_compat.module_paths import trunk_of
from sam3_lora.speed.levers import apply_speed_levers
from sam3_lora.speed.trunk_cache import TrunkFeatureCache, install_trunk_cache
from sam3_lora.training.config import TrainerConfig
from sam3_lora.training.distributed import DistInfo
from sam3_lora.tuning import TuningMethod

log = logging.getLogger("sam3_lora.train")


def cache_trunk(
    model: nn.Module, t: TrainerConfig, tuning: TuningMethod, dataset: DatasetConfig, run_dir: Path
) -> Optional[TrunkFeatureCache]:
    """The image trunk's features computed once per image and reused — in base scoring, every epoch,
    validation and final scoring — when training leaves the trunk frozen and feeds it the same images."""
    if not t.trunk_cache:
        return None
    if tuning.adapts_trunk(model):
        log.info("trunk cache off: this tuning trains the image trunk (its features change every step)")
        return None
    if dataset.augment.scale_min < 1:
        log.info(
            "trunk cache off: dataset.augment.scale_min=%g resizes each training image at random, so the trunk "
            "never sees the same input twice (scale_min=1 keeps flips only: two cached variants)",
            dataset.augment.scale_min,
        )
        return None
    trunk_of(model).requires_grad_(False)  # frozen from here on, as the tuning will leave it
    disk = Path(t.trunk_cache_dir) if t.trunk_cache_dir else run_dir / layout.TRUNK_CACHE_DIR
    log.info(
        "trunk cache on: each image's trunk features computed once (up to %g GB in memory, then in %s)",
        t.trunk_cache_memory_gb,
        disk,
    )
    return install_trunk_cache(model, t.trunk_cache_memory_gb, disk)


def training_device(t: TrainerConfig, info: DistInfo) -> torch.device:
    """``trainer.device``; under DDP on GPUs, this process's own GPU."""
    device = resolve_device(t.device)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
    return device


def eval_loader_settings(model: nn.Module, t: TrainerConfig) -> Dict:
    return dict(image_size=model.image_size, batch_size=t.batch_size, num_workers=t.num_workers, max_dets=t.max_dets)


def prepare_model(model: nn.Module, t: TrainerConfig, device: torch.device) -> None:
    """The speed levers and activation checkpointing the settings ask for, then onto the device."""
    base_dtype = {"bf16": torch.bfloat16, None: None}[t.base_dtype]
    apply_speed_levers(
        model,
        text_cache=t.text_cache,
        base_dtype=base_dtype,
        compile=t.compile,
        activation_checkpointing=t.activation_checkpointing,
    )
    model.to(device)
