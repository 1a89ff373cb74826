"""LoRA hyper-parameters and what they apply to (the ``lora`` config group)."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import List, Optional

from sam3_lora.core.errors import UserError

# The seeds' target vocabulary. q/k/v are row slices of SAM3's packed projections.
TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "linear1", "linear2")
TARGET_ALIASES = {"all": TARGETS}

# SAM3's parts, by the prefix of their module names in Sam3Image.
PARTS = {
    "vision": "backbone.vision_backbone.trunk.",
    "text": "backbone.language_backbone.encoder.",
    "geometry": "geometry_encoder.",
    "encoder": "transformer.encoder.",
    "decoder": "transformer.decoder.",
    "segmentation": "segmentation_head.",
}
PART_ALIASES = {"all": tuple(PARTS)}


class LoraConfigError(UserError, ValueError):
    """A LoRA setting that cannot work; the message lists the valid choices."""


def _expand(values, valid, aliases, what: str) -> List[str]:
    out: List[str] = []
    for v in values:
        if v in aliases:
            out.extend(aliases[v])
        elif v in valid:
            out.append(v)
        else:
            raise LoraConfigError(f"unknown LoRA {what} '{v}'; valid {what}s: {', '.join([*valid, *aliases])}")
    return list(dict.fromkeys(out))


def lora_scale(alpha: float, rank: int, use_rslora: bool = False) -> float:
    """The factor on ``B @ A``: ``alpha / rank``, or ``alpha / sqrt(rank)`` with rsLoRA."""
    return alpha / (math.sqrt(rank) if use_rslora else rank)


@dataclass
class LoraConfig:
    """What to adapt and how (the ``lora`` config group; ``lora=none`` fine-tunes every weight)."""

    #: Rank r of each update ``ΔW = scale · B @ A`` (A: r × in, B: out × r). Memory is dominated by
    #: activations, not by r; 4-16 is usual.
    rank: int = 8
    #: Scaling numerator: ``scale = alpha / rank`` (commonly alpha = 2 × rank).
    alpha: float = 16.0
    #: Dropout on the update's input during training (0 disables it).
    dropout: float = 0.0
    #: rsLoRA: ``scale = alpha / sqrt(rank)``, which keeps updates comparable across ranks.
    use_rslora: bool = False
    #: Which projections: q_proj, k_proj, v_proj (row slices of packed weights), out_proj,
    #: linear1 / linear2 (the FFN), or ``all``.
    targets: List[str] = field(default_factory=lambda: list(TARGETS))
    #: Which parts of SAM3: vision, text, geometry, encoder, decoder, segmentation, or ``all``.
    parts: List[str] = field(default_factory=lambda: ["vision", "encoder", "decoder"])
    #: Extra nn.Linear / nn.MultiheadAttention modules (full-name regex) to adapt whole.
    target_regex: Optional[str] = None
    #: Modules trained in full and saved with the adapter (like PEFT's modules_to_save).
    modules_to_save: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.targets = _expand(list(self.targets), TARGETS, TARGET_ALIASES, "target")
        self.parts = _expand(list(self.parts), tuple(PARTS), PART_ALIASES, "part")
        self.modules_to_save = list(self.modules_to_save)
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank <= 0:
            raise LoraConfigError(f"lora.rank must be a positive integer (e.g. 4, 8, 16), got {self.rank!r}")
        if not self.alpha > 0:
            raise LoraConfigError(f"lora.alpha must be positive (commonly 2 x rank), got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise LoraConfigError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        if not self.targets and not self.target_regex:
            raise LoraConfigError(
                f"lora.targets is empty and no lora.target_regex is set; choose from {', '.join(TARGETS)}, all"
            )
        if self.target_regex:
            try:
                re.compile(self.target_regex)
            except re.error as e:
                raise LoraConfigError(f"lora.target_regex '{self.target_regex}' is not a valid regex: {e}") from e

    @property
    def scale(self) -> float:
        return lora_scale(self.alpha, self.rank, self.use_rslora)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LoraConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
