"""Training checkpoints: adapter-only weights plus everything needed to resume exactly.

A checkpoint holds the trainable tensors (LoRA matrices and modules_to_save, or every
weight when fine-tuning in full), optimizer, scheduler, AMP scaler, RNG states and the
step counters, never the frozen base. Writes go to a temporary file in the same
folder and are renamed into place, so a crash, a full disk or a preemption never
leaves a half-written ``last.pt`` behind.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from sam3_lora.errors import UserError

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be written or does not belong to this run."""


def rng_state() -> Dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: Path) -> Path:
    """``torch.save`` to a temp file beside ``path``, then rename; nothing half-written survives."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(
            f"could not write checkpoint {path}: {e}. The previous checkpoint in {path.parent} is intact; "
            "free disk space (or set trainer.checkpoint_dir elsewhere) and resume."
        ) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def trainable_state(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: Dict[str, torch.Tensor], path) -> None:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} was written for another LoRA layout: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}. Resume with the config of the run that wrote it (its .hydra/config.yaml)."
        )
    with torch.no_grad():
        for name, value in state.items():
            if params[name].shape != value.shape:
                raise CheckpointError(
                    f"checkpoint {path}: {name} has shape {tuple(value.shape)}, "
                    f"the model expects {tuple(params[name].shape)}"
                )
            params[name].copy_(value)


def find_resume_checkpoint(run_dir: Path, explicit: Optional[str]) -> Optional[Path]:
    """An explicit ``trainer.resume`` path, else ``last.pt`` already in this run directory."""
    if explicit:
        path = Path(explicit)
        if path.is_dir():
            path = path / CHECKPOINT_DIR / LAST
        if not path.is_file():
            raise CheckpointError(f"trainer.resume={explicit}: no checkpoint at {path}")
        return path
    auto = Path(run_dir) / CHECKPOINT_DIR / LAST
    return auto if auto.is_file() else None


def load(path: Path) -> Dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({e}); delete it to start over or resume from another"
        ) from e
