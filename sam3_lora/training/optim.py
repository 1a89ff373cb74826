"""Learning-rate schedules (the ``scheduler`` config group), stepped once per optimizer step.

Each is a ``LambdaLR`` factor: a small callable object, so ``state_dict`` round-trips.
The optimizer itself is a plain ``torch.optim`` class instantiated by Hydra over the
trainable parameters only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


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
