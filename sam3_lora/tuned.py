"""Load a tuned model for use: from a training run directory, or a base model plus an adapter.

``run_dir`` brings the run's own model and dataset config (``.hydra/config.yaml``) and its
best adapter; without it, the ``model`` / ``dataset`` config and ``adapter`` path given on
the command line are used. ``base=true`` leaves the adapter out (the frozen base).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sam3_lora.errors import UserError
from sam3_lora.lora import AdapterInfo, load_adapter


class RunDirError(UserError, ValueError):
    """A run directory without what a finished training run leaves behind."""


@dataclass
class Tuned:
    model: nn.Module
    model_cfg: DictConfig
    dataset_cfg: Optional[DictConfig]
    adapter: Optional[Path]
    info: Optional[AdapterInfo]

    def describe(self) -> str:
        what = f"model={self.model_cfg.name}"
        return f"{what} + adapter {self.adapter}" if self.adapter else f"{what} (frozen base, no adapter)"


def run_config(run_dir) -> DictConfig:
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.is_file():
        raise RunDirError(f"{run_dir} is not a training run directory (no {path.relative_to(run_dir)})")
    return OmegaConf.load(path)


def run_adapter(run_dir) -> Path:
    for name in ("adapter_best.safetensors", "adapter_last.safetensors"):
        if (Path(run_dir) / name).is_file():
            return Path(run_dir) / name
    raise RunDirError(f"{run_dir} holds no adapter_best.safetensors or adapter_last.safetensors; was it a LoRA run?")


def load_tuned(cfg: DictConfig) -> Tuned:
    """``cfg`` has ``run_dir``, ``adapter``, ``base`` and (without run_dir) ``model`` / ``dataset``."""
    if cfg.get("run_dir"):
        rc = run_config(cfg.run_dir)
        model_cfg, dataset_cfg = rc.model, rc.dataset
        adapter = None if cfg.get("base") else Path(cfg.adapter or run_adapter(cfg.run_dir))
        # Training built the model first thing after seeding: a randomly initialised base
        # (model=sam3_tiny) comes out identical here. Checkpointed bases do not depend on it.
        torch.manual_seed(rc.seed)
    else:
        model_cfg, dataset_cfg = cfg.model, cfg.get("dataset")
        adapter = None if cfg.get("base") or not cfg.get("adapter") else Path(cfg.adapter)
    model = instantiate(model_cfg)
    info = load_adapter(model, adapter) if adapter else None
    return Tuned(model.eval(), model_cfg, dataset_cfg, adapter, info)


def output_dir(path, overwrite: bool) -> Path:
    """A folder to write into that holds nothing of an earlier run (unless asked to overwrite)."""
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise RunDirError(f"{path} already holds files; choose another output or set overwrite=true")
    path.mkdir(parents=True, exist_ok=True)
    return path
