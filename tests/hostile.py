"""Crafted files for the security tests: each would leave a marker file behind if the
project ever executed what it reads. The tests assert the marker never appears."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
import yaml


class _TouchesMarker:
    """Unpickling this runs ``os.system``: what an attacker's checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def crafted_torch_file(path: Path, marker: Path, layout: str = "checkpoint") -> Path:
    """A ``torch.save`` zip whose pickle runs a command when loaded without ``weights_only``.

    ``layout="checkpoint"`` mimics a training checkpoint's keys, ``"sam3"`` a base ``sam3.pt``."""
    payload = _TouchesMarker(marker)
    if layout == "checkpoint":
        obj = {"trainable": payload, "epoch": 1, "step": 1}
    else:
        obj = {"model": {"detector.x": payload}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def crafted_plain_pickle(path: Path, marker: Path) -> Path:
    """A bare pickle (no zip container) that runs a command when unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"trainable": _TouchesMarker(marker)}))
    return path


def crafted_run_config(run_dir: Path, marker: Path, base_config: dict) -> Path:
    """``<run_dir>/.hydra/config.yaml`` from ``base_config`` with the model's ``_target_``
    replaced by a call that would create ``marker`` (``os.system``)."""
    cfg = dict(base_config)
    cfg["model"] = {"_target_": "os.system", "_args_": [f"touch {marker}"], "name": "sam3_tiny"}
    path = Path(run_dir) / ".hydra" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path
