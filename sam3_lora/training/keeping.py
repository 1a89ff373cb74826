"""The keeping-method interface: ways of keeping what the base knew while tuning (``preserve=<option>``).

A method is one settings dataclass that subclasses :class:`KeepingMethod` and one
``conf/preserve/<option>.yaml`` naming it in ``_target_``. A run calls, in order:

1. ``prepare(target, retention, run_dir, info)`` after the data, before any model is built: find and
   check what the method needs (anchor images, checked against every scored split);
2. ``build(model, tuning, image_size, num_workers, seed, info)`` once tuning is applied: the
   :class:`KeepingTerm` every micro-batch adds to the labelled loss;
3. ``record()``: what results.json and the model card keep of its settings.

A term's ``loss(model, forward, to_device)`` returns named losses; ``losses[term.term]`` is the one
backpropagated (weighted already), the others are logged. A penalty that needs no batch (L2-SP:
the distance of the trained weights to the base's) ignores ``to_device``; distillation runs the next
anchor batch through ``forward`` (DDP's wrapper, so gradients are all-reduced with the step's).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Protocol
from pathlib import Path

from torch import Tensor, nn


class KeepingTerm(Protocol):
    term: str  # the key of the loss to backpropagate

    def loss(self, model: nn.Module, forward: nn.Module, to_device: Callable) -> Dict[str, Tensor]: ...


class KeepingMethod:
    """Base of a ``preserve`` option's settings (a dataclass): see the module docstring."""

    def prepare(self, target, retention, run_dir: Path, info) -> None:
        """What the method needs before a model is built (default: nothing)."""

    def build(self, model: nn.Module, tuning, image_size: int, num_workers: int, seed: int, info) -> KeepingTerm:
        raise NotImplementedError

    def record(self) -> Optional[Dict[str, Any]]:
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else None
