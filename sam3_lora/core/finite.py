"""Weights read from a file are checked finite where they enter (base checkpoints, adapters, training
checkpoints), so a broken file is refused before anything is computed with it, naming the tensor."""

from __future__ import annotations

from typing import Any, Iterator, List, Tuple

import torch

from sam3_lora.core.errors import UserError

MAX_LISTED = 5


class NonFiniteWeightsError(UserError, ValueError):
    """A file's floating-point tensors hold NaN or inf."""


def _tensors(obj: Any, name: str = "") -> Iterator[Tuple[str, torch.Tensor]]:
    """Every tensor in nested dicts, lists and tuples, by its key path."""
    if isinstance(obj, torch.Tensor):
        yield name, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{name}.{k}" if name else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{name}[{i}]")


def non_finite(obj: Any) -> List[Tuple[str, int, int]]:
    """``(tensor, non-finite count, numel)`` for each floating-point tensor in ``obj`` holding NaN/inf."""
    found = []
    for name, t in _tensors(obj):
        if t.is_floating_point() or t.is_complex():
            bad = int(t.numel() - torch.isfinite(t).sum())
            if bad:
                found.append((name, bad, t.numel()))
    return found


def require_finite(obj: Any, path, what: str) -> None:
    """Refuse ``obj`` (the tensors read from ``path``, a ``what``) when any of them holds NaN/inf."""
    found = non_finite(obj)
    if not found:
        return
    listed = "; ".join(f"{name}: {bad} of {numel} values NaN/inf" for name, bad, numel in found[:MAX_LISTED])
    more = f" (and {len(found) - MAX_LISTED} more tensors)" if len(found) > MAX_LISTED else ""
    raise NonFiniteWeightsError(
        f"{path}: this {what} holds non-finite values, so nothing computed with it would mean anything; it was not "
        f"loaded. {listed}{more}. The file is damaged or was written by a run that diverged: use another copy, "
        "or an earlier checkpoint."
    )
