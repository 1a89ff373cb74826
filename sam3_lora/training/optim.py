"""The ``optimizer`` and ``scheduler`` config groups: their settings, and the learning-rate schedules.

The optimizer group builds a factory (``_partial_``) that the trainer completes with the *named*
trainable parameters (LoRA and modules_to_save; everything with lora=none): ``lr_scales`` then puts
parameters in groups by name (per-module learning rates, layer-wise decay), a matter of config.
A schedule is a ``LambdaLR`` factor, stepped once per optimizer step: a small callable object,
so ``state_dict`` round-trips.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from sam3_lora.core.schema import Valid, at_least, is_number, number_in, positive, setting


@dataclass
class WarmupCosine:
    """Linear warmup from 0, then cosine decay to ``min_lr_ratio`` x the base lr."""

    warmup_steps: int
    total_steps: int
    min_lr_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class WarmupConstant:
    warmup_steps: int = 0

    def __call__(self, step: int) -> float:
        return min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0


@dataclass
class WarmupStep:
    """Multiply by ``gamma`` at each fraction of training in ``milestones`` (e.g. [0.66, 0.9])."""

    warmup_steps: int
    total_steps: int
    milestones: tuple = (0.66, 0.9)
    gamma: float = 0.1

    def __call__(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        passed = sum(step >= m * self.total_steps for m in self.milestones)
        return warm * self.gamma**passed


def _warmup(warmup_steps: int, warmup_ratio: float, total_steps: int) -> int:
    return warmup_steps if warmup_steps else int(warmup_ratio * total_steps)


def warmup_cosine(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_ratio: float = 0.05,
    min_lr_ratio: float = 0.01,
) -> LambdaLR:
    return LambdaLR(
        optimizer, WarmupCosine(_warmup(warmup_steps, warmup_ratio, total_steps), total_steps, min_lr_ratio)
    )


def constant(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, warmup_ratio: float = 0.0) -> LambdaLR:
    return LambdaLR(optimizer, WarmupConstant(_warmup(warmup_steps, warmup_ratio, total_steps)))


def step(
    optimizer: Optimizer,
    total_steps: int,
    milestones=(0.66, 0.9),
    gamma: float = 0.1,
    warmup_steps: int = 0,
    warmup_ratio: float = 0.0,
) -> LambdaLR:
    return LambdaLR(
        optimizer, WarmupStep(_warmup(warmup_steps, warmup_ratio, total_steps), total_steps, tuple(milestones), gamma)
    )


# ----------------------------------------------------------------------------- optimizers
NamedParameters = Iterable[Tuple[str, nn.Parameter]]


def parameter_groups(named: NamedParameters, lr: float, lr_scales: Sequence[Sequence] = ()) -> List[dict]:
    """The optimizer's groups: each parameter in the group of the first ``lr_scales`` pattern its name
    matches (``re.search``), at ``lr`` x that factor; the rest in one group at ``lr``. Without
    ``lr_scales`` (empty): one group, as a plain ``torch.optim`` class over the parameters makes."""
    patterns = [(re.compile(p), p, factor) for p, factor in lr_scales or ()]
    groups: Dict[Optional[str], List[nn.Parameter]] = {None: []}
    for name, param in named:
        key = next((p for rx, p, _ in patterns if rx.search(name)), None)
        groups.setdefault(key, []).append(param)
    out = [{"params": groups.pop(None)}] if groups[None] else []
    factors = {p: factor for _, p, factor in patterns}
    out += [{"params": params, "lr": lr * factors[p], "group": p} for p, params in groups.items() if params]
    return out


def adamw(named_parameters: NamedParameters, lr: float, weight_decay: float, betas, fused: bool, lr_scales=None):
    """``torch.optim.AdamW`` over the named trainable parameters, grouped by ``lr_scales``."""
    groups = parameter_groups(named_parameters, lr, lr_scales)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=tuple(betas), fused=fused)


def sgd(named_parameters: NamedParameters, lr: float, momentum: float, weight_decay: float, nesterov: bool, lr_scales=None):
    """``torch.optim.SGD`` over the named trainable parameters, grouped by ``lr_scales``."""
    groups = parameter_groups(named_parameters, lr, lr_scales)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


# ----------------------------------------------------------------------------- settings
LR = positive("a positive learning rate (LoRA: about 1e-4 to 3e-3)")
NON_NEGATIVE = number_in(0, math.inf, "a number >= 0")


def _lr_scales():
    return setting(
        doc="per-module learning rates: [[regex over parameter names, factor on lr], ...], e.g. "
        "[[segmentation_head,10.0]] (re.search, in order: the first pattern a name matches decides; []: one lr)",
        valid=Valid(
            lambda v: all(len(e) == 2 and _compiles(e[0]) and is_number(e[1]) and e[1] >= 0 for e in v),
            "a list of [regular expression, factor >= 0] pairs, e.g. [[segmentation_head,10.0]]",
        ),
        factory=list,
    )


def _compiles(pattern) -> bool:
    try:
        re.compile(pattern)
    except (re.error, TypeError):
        return False
    return True


def _warmup_steps():
    return setting(0, "optimizer steps of linear warmup from 0; 0: use warmup_ratio", at_least(0))


def _warmup_ratio(default: float):
    return setting(
        default,
        "warmup as a fraction of the training steps",
        number_in(0, 1, "a fraction of the training steps in [0, 1]"),
    )


@dataclass
class AdamWSettings:
    """``optimizer=adamw``: ``torch.optim.AdamW``."""

    _target_: str = "sam3_lora.training.optim.adamw"
    _partial_: bool = True
    lr: float = setting(1e-4, "peak learning rate", LR)
    weight_decay: float = setting(0.01, "decoupled weight decay", NON_NEGATIVE)
    betas: List[float] = setting(
        doc="Adam's moment decays",
        valid=Valid(
            lambda b: len(b) == 2 and all(is_number(x) and 0 <= x < 1 for x in b),
            "two numbers in [0, 1), e.g. [0.9, 0.999]",
        ),
        factory=lambda: [0.9, 0.999],
    )
    fused: bool = setting(
        True, "one kernel for the whole update (CPU and CUDA): ~7x faster than the per-tensor loop on CPU"
    )
    lr_scales: List[Any] = _lr_scales()


@dataclass
class SGDSettings:
    """``optimizer=sgd``: ``torch.optim.SGD``."""

    _target_: str = "sam3_lora.training.optim.sgd"
    _partial_: bool = True
    lr: float = setting(1e-2, "learning rate", LR)
    momentum: float = setting(0.9, "momentum", number_in(0, 1, "a number in [0, 1]"))
    weight_decay: float = setting(0.0, "L2 weight decay", NON_NEGATIVE)
    nesterov: bool = setting(True, "Nesterov momentum")
    lr_scales: List[Any] = _lr_scales()


@dataclass
class WarmupCosineSettings:
    """``scheduler=warmup_cosine``: linear warmup, then cosine decay."""

    _target_: str = "sam3_lora.training.optim.warmup_cosine"
    _partial_: bool = True
    warmup_steps: int = _warmup_steps()
    warmup_ratio: float = _warmup_ratio(0.05)
    min_lr_ratio: float = setting(
        0.01, "the final lr as a fraction of the peak", number_in(0, 1, "a fraction of the peak lr in [0, 1]")
    )


@dataclass
class ConstantSettings:
    """``scheduler=constant``: linear warmup, then the peak lr."""

    _target_: str = "sam3_lora.training.optim.constant"
    _partial_: bool = True
    warmup_steps: int = _warmup_steps()
    warmup_ratio: float = _warmup_ratio(0.0)


@dataclass
class StepSettings:
    """``scheduler=step``: linear warmup, then the lr times ``gamma`` at each milestone."""

    _target_: str = "sam3_lora.training.optim.step"
    _partial_: bool = True
    milestones: List[float] = setting(
        doc="fractions of training where the lr is multiplied by gamma",
        valid=Valid(
            lambda ms: all(is_number(m) and 0 < m < 1 for m in ms), "fractions of training in (0, 1), e.g. [0.66, 0.9]"
        ),
        factory=lambda: [0.66, 0.9],
    )
    gamma: float = setting(0.1, "the factor at each milestone", positive("a positive factor"))
    warmup_steps: int = _warmup_steps()
    warmup_ratio: float = _warmup_ratio(0.0)
