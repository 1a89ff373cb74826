"""The ``optimizer`` and ``scheduler`` config groups: their settings, and the learning-rate schedules.

The optimizer group builds a factory (``_partial_``) that the trainer completes with the *named*
trainable parameters (LoRA and modules_to_save; everything with lora=none): ``lr_scales``,
``layer_decay`` and ``no_weight_decay`` then put parameters in groups by name (per-module learning
rates, layer-wise decay over a ViT's blocks, no decay on biases and norms), a matter of config.
A schedule is a ``LambdaLR`` factor, stepped once per optimizer step: a small callable object,
so ``state_dict`` round-trips.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import math
import re
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from sam3_lora.core.schema import Valid, at_least, is_number, number_in, positive, problems, setting
from sam3_lora.sam3_compat.module_paths import TRUNK

log = logging.getLogger(__name__)


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


@dataclass
class InverseSqrt:
    """Meta's SAM3 fine-tuning schedule (``InverseSquareRootParamScheduler``), in optimizer steps:
    linear warmup from 0 (``step / warmup_steps``: the first step's rate is 0, as in Meta's), then
    ``1 / sqrt((step + timescale - warmup_steps) / timescale)`` (1 at the end of warmup), times a linear
    cooldown to 0 over the last ``cooldown_steps``. Meta's trainer skips the update once the run is
    over, so a step at or past ``total_steps`` keeps the last step's rate."""

    total_steps: int
    timescale: float = 20
    warmup_steps: int = 20
    cooldown_steps: int = 20

    def __call__(self, step: int) -> float:
        step = min(step, max(0, self.total_steps - 1))
        factor = 1.0
        if step > self.warmup_steps:
            factor /= math.sqrt((step + self.timescale - self.warmup_steps) / self.timescale)
        if self.warmup_steps:
            factor *= min(1.0, step / self.warmup_steps)
        if self.cooldown_steps:
            factor *= min(1.0, (self.total_steps - step) / self.cooldown_steps)
        return factor


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


def inverse_sqrt(
    optimizer: Optimizer, total_steps: int, timescale: float = 20, warmup_steps: int = 20, cooldown_steps: int = 20
) -> LambdaLR:
    return LambdaLR(optimizer, InverseSqrt(total_steps, timescale, warmup_steps, cooldown_steps))


# ----------------------------------------------------------------------------- optimizers
NamedParameters = Iterable[Tuple[str, nn.Parameter]]

# The weights and biases of SAM3's nn.LayerNorms, by name: norm, norm1..3, *_norm (catext_norm,
# encode_norm, ...), ln_pre, ln_1, ln_2, ln_final. Its GroupNorms (segmentation_head.pixel_decoder.norms.K)
# do not match, as Meta's recipe decays them (it names the LayerNorm class only). Checked against the
# tiny model's module types (tests/test_optim_recipe.py); the full-size model has the same names.
NORM_PARAMETERS = r"(?:^|\.)(?:\w*norm\d*|ln_\w+)\.(?:weight|bias)$"
# What a ViT trunk holds below its first block (BEiT's layer ids, which Meta's layer decay uses).
EMBEDDINGS = ("ln_pre", "pos_embed", "cls_token", "patch_embed")
BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)(?:\.|$)")


def _layer(rest: str, num_blocks: int) -> int:
    """A trunk parameter's layer (its name after the prefix): 0 for the embeddings, k + 1 for block k,
    num_blocks + 1 for the rest; relative-position tables count as the top too, as in BEiT."""
    top = num_blocks + 1
    if "rel_pos" in rest:
        return top
    if any(part in rest for part in EMBEDDINGS):
        return 0
    block = BLOCK.search(rest)
    return int(block.group(1)) + 1 if block else top


def layer_decay_factors(
    names: Sequence[str], value: float, prefix: str, overrides=(), num_blocks: Optional[int] = None
) -> Dict[str, float]:
    """Each name's learning-rate factor: ``value ** (num_blocks + 1 - layer)`` under ``prefix``
    (1 for its top, ``value`` for its last block, down to ``value ** (num_blocks + 1)`` for the patch
    embedding); the first ``overrides`` pattern (fnmatch over the full name) a name under ``prefix``
    matches sets its factor instead; 1 for names outside ``prefix``. ``num_blocks``: counted from the
    names (highest ``blocks.<k>`` + 1) when None, so no model object is needed."""
    start = prefix + "."
    under = {n: n[len(start) :] for n in names if n.startswith(start)}
    seen = [int(b.group(1)) for b in map(BLOCK.search, under.values()) if b]
    if num_blocks is None:
        num_blocks = max(seen, default=-1) + 1
    elif seen and max(seen) >= num_blocks:
        raise ValueError(
            f"optimizer.layer_decay.num_blocks={num_blocks}: the parameters under {prefix} reach block "
            f"{max(seen)}; set it to at least {max(seen) + 1}, or null to count the blocks from the names"
        )
    if names and not under:
        log.warning("optimizer.layer_decay.prefix=%s: no trainable parameter is under it; no layer decay", prefix)
    factors = {}
    for name in names:
        if name not in under:
            factors[name] = 1.0
            continue
        override = next((float(f) for pattern, f in overrides if fnmatch.fnmatchcase(name, pattern)), None)
        layer = _layer(under[name], num_blocks)
        factors[name] = override if override is not None else value ** (num_blocks + 1 - layer)
    return factors


def parameter_groups(
    named: NamedParameters,
    lr: float,
    lr_scales: Sequence[Sequence] = (),
    layer_decay: Any = None,
    no_weight_decay: Any = None,
) -> List[dict]:
    """The optimizer's groups: each parameter at ``lr`` x the factor of the first ``lr_scales`` pattern
    its name matches (``re.search``) x its ``layer_decay`` factor (:func:`layer_decay_factors`), and
    at weight decay 0 where ``no_weight_decay`` exempts it; one group per (pattern, layer factor,
    decay). The parameters at ``lr`` with the optimizer's weight decay come first, in a group of their
    own without ``lr``. With none of the three set: one group, as a plain ``torch.optim`` class over
    the parameters makes. ``layer_decay`` / ``no_weight_decay``: their settings' fields (a mapping or
    the dataclass), or None (off)."""
    named = list(named)
    patterns = [(re.compile(p), p, factor) for p, factor in lr_scales or ()]
    factors = {p: factor for _, p, factor in patterns}
    layer_factors: Dict[str, float] = {}
    if layer_decay is not None:
        decay = _checked(LayerDecaySettings, layer_decay, "optimizer.layer_decay")
        layer_factors = layer_decay_factors([n for n, _ in named], **decay)
    exempt = _exemption(no_weight_decay)
    plain = (None, 1.0, True)
    groups: Dict[tuple, List[nn.Parameter]] = {plain: []}
    for name, param in named:
        pattern = next((p for rx, p, _ in patterns if rx.search(name)), None)
        groups.setdefault((pattern, layer_factors.get(name, 1.0), not exempt(name)), []).append(param)
    out = [{"params": groups.pop(plain)}] if groups[plain] else []
    for (pattern, layer_factor, decays), params in groups.items():
        group_lr = lr * factors.get(pattern, 1.0) * layer_factor
        group = {"params": params, "lr": group_lr, "group": _label(pattern, layer_factor, decays)}
        if not decays:
            group["weight_decay"] = 0.0
        out.append(group)
    return out


def _label(pattern: Optional[str], layer_factor: float, decays: bool) -> str:
    """A group's name in the optimizer's state: what put its parameters there."""
    parts = [pattern] if pattern is not None else []
    parts += [f"layer_decay x{layer_factor:.6g}"] if layer_factor != 1.0 else []
    parts += [] if decays else ["no weight decay"]
    return ", ".join(parts)


def _exemption(no_weight_decay: Any) -> Callable[[str], bool]:
    """Whether a parameter name takes no weight decay under the ``no_weight_decay`` settings."""
    if no_weight_decay is None:
        return lambda name: False
    rules = _checked(NoWeightDecaySettings, no_weight_decay, "optimizer.no_weight_decay")
    patterns = [re.compile(p) for p in rules["names"]] + ([re.compile(NORM_PARAMETERS)] if rules["norms"] else [])
    return lambda name: any(rx.search(name) for rx in patterns)


def _checked(schema: type, given: Any, key: str) -> Dict[str, Any]:
    """``given`` (a mapping, e.g. a config node, or the dataclass) as plain values over ``schema``'s
    defaults, checked as the config check does: a call from Python is refused the same way."""
    values = dataclasses.asdict(given) if dataclasses.is_dataclass(given) else _plain(given)
    values = {**dataclasses.asdict(schema()), **values}
    found = problems(schema, values, key)
    if found:
        raise ValueError(f"invalid {key}:\n- " + "\n- ".join(found))
    return values


def _plain(value: Any) -> Any:
    """Config containers (``DictConfig``, ``ListConfig``) as dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value


def adamw(
    named_parameters: NamedParameters,
    lr: float,
    weight_decay: float,
    betas,
    fused: bool,
    lr_scales=None,
    layer_decay=None,
    no_weight_decay=None,
):
    """``torch.optim.AdamW`` over the named trainable parameters, grouped by ``lr_scales``,
    ``layer_decay`` and ``no_weight_decay``."""
    groups = parameter_groups(named_parameters, lr, lr_scales, layer_decay, no_weight_decay)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=tuple(betas), fused=fused)


def sgd(
    named_parameters: NamedParameters,
    lr: float,
    momentum: float,
    weight_decay: float,
    nesterov: bool,
    lr_scales=None,
    layer_decay=None,
    no_weight_decay=None,
):
    """``torch.optim.SGD`` over the named trainable parameters, grouped by ``lr_scales``,
    ``layer_decay`` and ``no_weight_decay``."""
    groups = parameter_groups(named_parameters, lr, lr_scales, layer_decay, no_weight_decay)
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


def _fnmatch_factors(pairs) -> bool:
    return all(len(e) == 2 and isinstance(e[0], str) and is_number(e[1]) and e[1] > 0 for e in pairs)


@dataclass
class LayerDecaySettings:
    """``optimizer.layer_decay``: layer-wise learning-rate decay over a ViT trunk (BEiT's; Meta's SAM3
    fine-tuning recipe). Defaults: Meta's recipe, so a preset's ``layer_decay: {}`` is Meta's."""

    value: float = setting(
        0.9,
        "the factor per block below the top: block k of n at lr x value^(n-k), the patch and position "
        "embeddings (and ln_pre) at value^(n+1)",
        number_in(0, 1, "a factor in (0, 1], e.g. 0.9 (1: no decay)", low_open=True),
    )
    prefix: str = setting(
        TRUNK,
        "the trunk, as a parameter-name prefix: its blocks are <prefix>.blocks.<k>.*; parameters outside it keep "
        "their lr",
        Valid(lambda v: isinstance(v, str) and v.strip(". ") == v, "a parameter-name prefix without a trailing dot"),
    )
    overrides: List[Any] = setting(
        doc="[[fnmatch pattern over full parameter names, factor], ...] under the prefix: the first match sets "
        "the factor instead of the layer's (Meta's: position embeddings at the trunk's full lr)",
        valid=Valid(_fnmatch_factors, "a list of [pattern, factor > 0] pairs, e.g. [['*pos_embed*', 1.0]]"),
        factory=lambda: [["*pos_embed*", 1.0]],
    )
    num_blocks: Optional[int] = setting(
        None,
        "the trunk's block count; null: counted from the trainable parameters' names (highest block + 1), "
        "right whenever the last block trains",
        at_least(1, optional=True),
    )


@dataclass
class NoWeightDecaySettings:
    """``optimizer.no_weight_decay``: parameters trained at weight decay 0. Defaults: Meta's recipe
    (biases and LayerNorms), so a preset's ``no_weight_decay: {}`` is Meta's."""

    names: List[str] = setting(
        doc="regexes over parameter names (re.search), e.g. [bias]: each parameter one matches takes no decay",
        valid=Valid(lambda v: all(isinstance(p, str) and _compiles(p) for p in v), "a list of regular expressions"),
        factory=lambda: ["bias"],
    )
    norms: bool = setting(
        True,
        "also the normalization layers' weights and biases, by SAM3's LayerNorm names (norm, norm1, *_norm, "
        "ln_pre, ln_1, ln_final: NORM_PARAMETERS in sam3_lora/training/optim.py; GroupNorms keep their decay, as in "
        "Meta's)",
    )


# A null section takes no mapping from the command line (OmegaConf merges none into it): a preset
# (YAML) turns these on, the command line then sets their keys or null.
def _layer_decay():
    return setting(
        None,
        "layer-wise lr decay over a ViT trunk's blocks ({value, prefix, overrides, num_blocks}); null: off. On in "
        "optimizer=meta_transfer, whose keys the command line changes (optimizer.layer_decay.value=0.8)",
    )


def _no_weight_decay():
    return setting(
        None,
        "parameters at weight decay 0 ({names: [regex, ...], norms: true|false}); null: all decay. On in "
        "optimizer=meta_transfer (optimizer.no_weight_decay.norms=false there: biases only)",
    )


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
    layer_decay: Optional[LayerDecaySettings] = _layer_decay()
    no_weight_decay: Optional[NoWeightDecaySettings] = _no_weight_decay()


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
    layer_decay: Optional[LayerDecaySettings] = _layer_decay()
    no_weight_decay: Optional[NoWeightDecaySettings] = _no_weight_decay()


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


@dataclass
class InverseSqrtSettings:
    """``scheduler=inverse_sqrt``: Meta's SAM3 fine-tuning schedule: linear warmup, inverse-square-root
    decay, linear cooldown to 0 (:class:`InverseSqrt`)."""

    _target_: str = "sam3_lora.training.optim.inverse_sqrt"
    _partial_: bool = True
    timescale: float = setting(
        20, "optimizer steps after warmup at which the lr is 1/sqrt(2) of the peak", positive("a positive step count")
    )
    warmup_steps: int = setting(20, "optimizer steps of linear warmup from 0 (0: none)", at_least(0))
    cooldown_steps: int = setting(
        20, "the last optimizer steps, over which the lr falls linearly to 0 (0: none)", at_least(0)
    )
