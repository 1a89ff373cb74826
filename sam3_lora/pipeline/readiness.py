"""What must hold before a run starts, beyond valid settings: the base weights and the training data are
there. ``train`` stops on any of them (all listed at once) before anything is built; ``check`` prints
each as a line, beside the machine's own checks."""

from __future__ import annotations

from typing import Tuple

from omegaconf import DictConfig, OmegaConf

from sam3_lora.core.errors import UserError
from sam3_lora.data.config import DatasetConfig
from sam3_lora.models.base_checkpoint import BaseCheckpointError

Check = Tuple[str, bool, str]  # (what, ok, detail)


class PreflightError(UserError, ValueError):
    """Things missing before any work starts (all listed at once)."""


def base_weights(model: DictConfig) -> Check:
    """Where the ``model`` section's weights come from (its schema says: ``weights()``)."""
    try:
        return "base checkpoint", True, OmegaConf.to_object(model).weights()
    except BaseCheckpointError as e:
        return "base checkpoint", False, str(e)


def training_data(dataset: DatasetConfig) -> Check:
    if dataset.generate is not None:
        return "data: train", True, f"toy shapes, generated at {dataset.root} on first use"
    if not dataset.train.exists():
        return (
            "data: train",
            False,
            f"No training data at '{dataset.train.ann_file}' (needed).\n  Put a COCO export in Roboflow's layout at "
            f"{dataset.root}/{{train,valid,test}}/_annotations.coco.json (images beside each file), or set "
            "dataset.root=/path/to/export (or dataset.train.ann_file / dataset.train.img_folder); dataset=toy trains "
            "on generated shapes.",
        )
    return "data: train", True, dataset.train.ann_file


def require_ready(model: DictConfig, dataset: DatasetConfig) -> None:
    """Raise a :class:`PreflightError` listing what is missing."""
    failed = [detail for _, ok, detail in (base_weights(model), training_data(dataset)) if not ok]
    if failed:
        raise PreflightError("cannot start:\n- " + "\n- ".join(failed))
