"""Writing full weights in ``sam3.pt``'s layout, which stock sam3 and ``model.checkpoint_path`` load."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from sam3_lora.core.atomic_files import atomic_save


def save_sam3_state(state_dict: dict, path, **extra) -> Path:
    """Write full weights in sam3.pt's layout (image model under ``detector.``), atomically,
    so ``load_base_checkpoint``, ``model.checkpoint_path`` and stock sam3's loader take them."""
    state = {f"detector.{k}": v.detach().cpu() for k, v in state_dict.items()}
    return atomic_save({"model": state, **extra}, Path(path))


def save_sam3_checkpoint(model: nn.Module, path, **extra) -> Path:
    """``save_sam3_state`` of a model's own weights."""
    return save_sam3_state(model.state_dict(), path, **extra)
