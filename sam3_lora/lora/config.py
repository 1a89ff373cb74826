"""LoRA hyper-parameters and what they apply to (the ``lora`` config group)."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence

from sam3_lora.core.errors import UserError
from sam3_lora.core.schema import Valid, at_least, number_in, positive, problems, setting
from sam3_lora.sam3_compat import module_paths as paths

# The projections LoRA targets, by name. q/k/v are row slices of SAM3's packed projections.
TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "linear1", "linear2")
TARGET_ALIASES = {"all": TARGETS}

# SAM3's parts, by the prefix of their module names in Sam3Image.
PARTS = {
    "vision": f"{paths.TRUNK}.",
    "text": f"{paths.TEXT_ENCODER}.",
    "geometry": f"{paths.GEOMETRY_ENCODER}.",
    "encoder": f"{paths.ENCODER}.",
    "decoder": f"{paths.DECODER}.",
    "segmentation": f"{paths.SEGMENTATION_HEAD}.",
}
PART_ALIASES = {"all": tuple(PARTS)}


class LoraConfigError(UserError, ValueError):
    """LoRA settings that cannot work; the message (and ``problems``, one line each) lists the valid choices."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        super().__init__(message)
        self.problems = list(problems) or [message]


def _expand(values, aliases) -> List[str]:
    out: List[str] = []
    for v in values:
        out.extend(aliases.get(v, (v,)))
    return list(dict.fromkeys(out))


def _known(valid, aliases, what: str) -> Valid:
    """Names among ``valid`` or its ``aliases``; the message names the first unknown one."""

    def says(values) -> str:
        bad = next(v for v in values if v not in valid and v not in aliases)
        return f"unknown LoRA {what} '{bad}'; valid {what}s: {', '.join([*valid, *aliases])}"

    return Valid(lambda values: all(v in valid or v in aliases for v in values), says)


def _compiles(pattern) -> bool:
    if pattern is None:
        return True
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


def lora_scale(alpha: float, rank: int, use_rslora: bool = False) -> float:
    """The factor on ``B @ A``: ``alpha / rank``, or ``alpha / sqrt(rank)`` with rsLoRA."""
    return alpha / (math.sqrt(rank) if use_rslora else rank)


@dataclass
class LoraConfig:
    """What to adapt and how (the ``lora`` config group; ``lora=none`` fine-tunes every weight)."""

    rank: int = setting(
        8,
        "rank r of each update dW = scale * B @ A (A: r x in, B: out x r); memory is dominated by activations, not "
        "by r; 4-16 is usual",
        at_least(1, "a positive integer (e.g. 4, 8, 16)"),
    )
    alpha: float = setting(
        16.0,
        "scaling numerator: scale = alpha / rank (commonly alpha = 2 x rank)",
        positive("positive (commonly 2 x rank)"),
    )
    dropout: float = setting(
        0.0,
        "dropout on the update's input during training (0 disables it)",
        number_in(0, 1, "in [0, 1)", high_open=True),
    )
    use_rslora: bool = setting(False, "rsLoRA: scale = alpha / sqrt(rank), which keeps updates comparable across ranks")
    targets: List[str] = setting(
        doc="which projections: q_proj, k_proj, v_proj (row slices of packed weights), out_proj, linear1 / linear2 "
        "(the FFN), or all",
        valid=_known(TARGETS, TARGET_ALIASES, "target"),
        factory=lambda: list(TARGETS),
    )
    parts: List[str] = setting(
        doc="which parts of SAM3: vision, text, geometry, encoder, decoder, segmentation, or all",
        valid=_known(tuple(PARTS), PART_ALIASES, "part"),
        factory=lambda: ["vision", "encoder", "decoder"],
    )
    target_regex: Optional[str] = setting(
        None,
        "extra nn.Linear / nn.MultiheadAttention modules (full-name regex) to adapt whole",
        Valid(_compiles, "not a valid regular expression"),
    )
    modules_to_save: List[str] = setting(
        doc="modules trained in full and saved with the adapter (like PEFT's modules_to_save)", factory=list
    )

    def __post_init__(self) -> None:
        found = problems(LoraConfig, self.to_dict(), "lora")
        if found:
            raise LoraConfigError("; ".join(found), found)
        self.targets = _expand(list(self.targets), TARGET_ALIASES)
        self.parts = _expand(list(self.parts), PART_ALIASES)
        self.modules_to_save = list(self.modules_to_save)

    @staticmethod
    def relation_problems(values, key: str) -> List[str]:
        if values.get("target_regex"):
            return []  # the regex alone names modules
        found = []
        if not values.get("targets"):
            found.append(f"{key}.targets=[]: empty, and no {key}.target_regex is set; choose from {', '.join(TARGETS)}, all")
        if not values.get("parts"):
            found.append(f"{key}.parts=[]: empty, and no {key}.target_regex is set; choose from {', '.join(PARTS)}, all")
        return found

    @property
    def scale(self) -> float:
        return lora_scale(self.alpha, self.rank, self.use_rslora)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "LoraConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
