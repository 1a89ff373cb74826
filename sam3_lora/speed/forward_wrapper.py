"""A callable put in front of a module's ``forward`` as an instance attribute (the caches use it): the
state dict, the module tree and every hook stay as they were, and taking it away restores the stock
forward."""

from __future__ import annotations

from typing import Callable, TypeVar

from torch import nn

W = TypeVar("W")


def wrap_forward(module: nn.Module, kind: type, make: Callable[[], W]) -> W:
    """The ``kind`` wrapper already in front of ``module`` (idempotent), else ``make()`` put there."""
    current = module.__dict__.get("forward")
    if isinstance(current, kind):
        return current
    wrapper = make()
    module.forward = wrapper
    return wrapper


def unwrap_forward(module: nn.Module, kind: type) -> None:
    if isinstance(module.__dict__.get("forward"), kind):
        del module.forward
