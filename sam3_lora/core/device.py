"""Device, mixed precision, memory and seeding: what training, evaluation and prediction share."""

from __future__ import annotations

import random
from typing import Optional

import numpy as np
import torch

from sam3_lora.core.schema import Valid


def resolve_device(name: str) -> torch.device:
    """``auto``: the first CUDA GPU when there is one, else the CPU; otherwise the device named."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def is_device_name(value) -> bool:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``: what ``resolve_device`` takes."""
    if value == "auto":
        return True
    try:
        return torch.device(value).type in ("cpu", "cuda") and (torch.device(value).index or 0) < 1024
    except (RuntimeError, TypeError):
        return False


DEVICE_NAME = Valid(is_device_name, "auto, cpu, cuda or cuda:N")


def resolve_amp(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for ``trainer.amp`` on ``device`` (None: full precision)."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp in ("auto", "bf16"):
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    raise ValueError(f"trainer.amp must be auto, bf16, fp16 or off; got '{amp}'")


def peak_memory_gb(device: torch.device) -> float:
    """Peak GPU memory allocated, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, numpy and torch (every device); ``deterministic``: torch's deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
