"""The image trunk's output reused while the trunk cannot change: each image through the ViT once.

SAM3's ViT trunk is 446M of the 840M parameters and nearly all of the forward's work. When no trunk
weight trains (``lora=heads``, or any preset without the ``vision`` part) and an image reaches the
trunk as the same tensor every time (no random resize; a horizontal flip gives a second variant), its
output — the ViT's features before the neck, which still runs and can train — is the same in every
epoch, every validation and every scoring pass. :func:`install_trunk_cache` puts a
:class:`TrunkFeatureCache` in front of the trunk: each image's features are computed once and kept
in memory up to a size, then on disk (memory-mapped), and later batches are assembled from them.

An entry is keyed by the image's content (a fingerprint of the input tensor: two float64 random
projections of all its values, exact for one input and different for different inputs but with
negligible chance), the trunk's weights (a fingerprint taken when it is installed, and the scales of
any adapters in it), the input size and dtype, the device kind and the autocast dtype: an entry is
never reused across any of them. A disk entry carries its own length and checksum; one that does not
match is computed again and rewritten, never trusted.

The trunk runs in eval mode for caching: stochastic layers (SAM3's ViT has drop-path 0.1) are off,
where an uncached training step would apply them to the frozen trunk. The small models here have
none, so cached and uncached training give the same losses.

The cache steps aside by itself (the stock forward runs) while any trunk weight requires a gradient.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Hashable, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from sam3_lora.core.atomic_files import atomic_save
from sam3_lora.sam3_compat.module_paths import trunk_of
from sam3_lora.speed.forward_wrapper import unwrap_forward, wrap_forward

log = logging.getLogger(__name__)

PROJECTIONS = 2
_SEED = 20261130


SAMPLES = 4096  # values per tensor the weights fingerprint reads


def _fingerprint(module: nn.Module) -> str:
    """A hash of ``module``'s parameters: names, shapes, dtypes and up to SAMPLES values of each at a fixed
    stride (exact values, so any retrained or other checkpoint shows; read in milliseconds)."""
    h = hashlib.sha256()
    for name, t in sorted(module.named_parameters()):
        flat = t.detach().reshape(-1)
        if flat.numel() > SAMPLES:
            flat = flat[torch.arange(SAMPLES, device=flat.device) * (flat.numel() // SAMPLES)]
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(flat.to(device="cpu", dtype=torch.float32).numpy().tobytes())
    return h.hexdigest()[:16]


class TrunkFeatureCache:
    """Callable standing in for the trunk's ``forward``; see the module docstring."""

    def __init__(self, trunk: nn.Module, max_memory_gb: float = 4.0, disk_dir: Optional[Path] = None):
        self.trunk = trunk
        self.stock_forward = trunk.forward
        self.max_bytes = int(max_memory_gb * 2**30)
        self.disk_dir = Path(disk_dir) if disk_dir else None
        self.memory: "OrderedDict[Hashable, List[Tensor]]" = OrderedDict()
        self.memory_bytes = 0
        self._weights: Optional[Tuple[Tuple[int, ...], str]] = None  # (parameter versions, fingerprint)
        self.hits = self.misses = self.disk_hits = self.rebuilt = 0
        self._projections: Dict[Tuple, Tensor] = {}
        self._told = False

    def stats(self) -> Dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "disk_hits": self.disk_hits, "rebuilt": self.rebuilt}

    def active(self) -> bool:
        """Only while no trunk weight can change."""
        on = not any(p.requires_grad for p in self.trunk.parameters())
        if not on and not self._told:
            log.info("trunk cache steps aside: the image trunk trains (its features change every step)")
            self._told = True
        return on

    # ---------------------------------------------------------------- keys
    def _content(self, x: Tensor) -> Tensor:
        """Per image, PROJECTIONS float64 random projections of its values (on its own device)."""
        shape = tuple(x.shape[1:])
        w = self._projections.get((shape, x.device))
        if w is None:
            g = torch.Generator().manual_seed(_SEED)
            w = torch.randn(PROJECTIONS, int(np.prod(shape)), generator=g, dtype=torch.float64).to(x.device)
            self._projections[(shape, x.device)] = w
        return x.reshape(len(x), -1).to(torch.float64) @ w.T

    def weights(self) -> str:
        """The trunk weights' fingerprint, taken again whenever a weight was changed in place (merged,
        loaded, edited: torch counts each tensor's in-place changes)."""
        versions = tuple(p._version for p in self.trunk.parameters())
        if self._weights is None or self._weights[0] != versions:
            self._weights = (versions, _fingerprint(self.trunk))
        return self._weights[1]

    def _state(self, x: Tensor) -> Hashable:
        adapters = tuple((m.adapter_scale, m.merged) for m in self.trunk.modules() if hasattr(m, "adapter_scale"))
        amp = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else None
        return (self.weights(), adapters, tuple(x.shape[1:]), str(x.dtype), x.device.type, str(amp))

    def keys(self, x: Tensor) -> List[str]:
        state = repr(self._state(x))
        content = self._content(x).cpu().numpy()
        return [hashlib.sha256((state + row.tobytes().hex()).encode()).hexdigest()[:32] for row in content]

    # ---------------------------------------------------------------- storage
    def _remember(self, key: str, features: List[Tensor]) -> None:
        size = sum(f.numel() * f.element_size() for f in features)
        if self.memory_bytes + size <= self.max_bytes:
            self.memory[key] = features
            self.memory_bytes += size
        elif self.disk_dir is not None:
            _write_entry(self.disk_dir / f"{key}.pt", features)

    def _recall(self, key: str) -> Optional[List[Tensor]]:
        if key in self.memory:
            return self.memory[key]
        if self.disk_dir is None:
            return None
        path = self.disk_dir / f"{key}.pt"
        if not path.is_file():
            return None
        features = _read_entry(path)
        if features is None:
            self.rebuilt += 1
            log.warning("trunk cache: %s is damaged or incomplete; its features are computed again", path)
            return None
        self.disk_hits += 1
        return features

    # ---------------------------------------------------------------- forward
    def __call__(self, x: Tensor, *args, **kwargs):
        if args or kwargs or not self.active():
            return self.stock_forward(x, *args, **kwargs)
        keys = self.keys(x)
        found = [self._recall(k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            was_training = self.trunk.training
            self.trunk.eval()  # stochastic layers off: the features are the trunk's, once
            try:
                with torch.no_grad():
                    computed = self.stock_forward(x[missing])
            finally:
                self.trunk.train(was_training)
            for j, i in enumerate(missing):
                features = [level[j : j + 1].detach().to("cpu", copy=True) for level in computed]
                self._remember(keys[i], features)
                found[i] = features
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return [torch.cat([f[level] for f in found]).to(x.device, non_blocking=True) for level in range(len(found[0]))]


def _write_entry(path: Path, features: List[Tensor]) -> None:
    """One image's features, with their byte length and checksum (a damaged file is detected)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blobs = [f.contiguous().view(torch.uint8).reshape(-1) for f in features]
    digest = hashlib.sha256(b"".join(b.numpy().tobytes() for b in blobs)).hexdigest()
    atomic_save({"features": features, "sha256": digest, "bytes": sum(b.numel() for b in blobs)}, path)


def _read_entry(path: Path) -> Optional[List[Tensor]]:
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        features = entry["features"]
        blobs = [f.contiguous().view(torch.uint8).reshape(-1) for f in features]
        if sum(b.numel() for b in blobs) != entry["bytes"]:
            return None
        if hashlib.sha256(b"".join(b.numpy().tobytes() for b in blobs)).hexdigest() != entry["sha256"]:
            return None
        return features
    except Exception:  # noqa: BLE001 - truncated, corrupt, or not ours: computed again
        return None


def install_trunk_cache(
    model: nn.Module, max_memory_gb: float = 4.0, disk_dir: Optional[Path] = None
) -> TrunkFeatureCache:
    """Put a cache in front of the model's image trunk (idempotent) and return it."""
    trunk = trunk_of(model)
    return wrap_forward(trunk, TrunkFeatureCache, lambda: TrunkFeatureCache(trunk, max_memory_gb, disk_dir))


def remove_trunk_cache(model: nn.Module) -> None:
    unwrap_forward(trunk_of(model), TrunkFeatureCache)
