"""Put LoRA layers into a model, freeze the rest, and report what happened."""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from sam3_lora.lora.config import PARTS, LoraConfig
from sam3_lora.lora.layers import LoraDelta, LoraLinear, LoraMultiheadAttention
from sam3_lora.lora.targets import TargetPlan, part_of, plan_targets

LORA_LAYERS = (LoraLinear, LoraMultiheadAttention)


# Values per base tensor that the weights fingerprint reads (see base_weights_fingerprint).
WEIGHT_SAMPLES = 4096


@dataclass
class InjectionReport:
    config: LoraConfig
    base_fingerprint: str
    base_weights_fingerprint: str
    # module name -> adapted slices, e.g. {"...attn.qkv": ["q", "v"], "...linear1": ["full"]}
    targets: Dict[str, List[str]] = field(default_factory=dict)
    modules_to_save: Tuple[str, ...] = ()

    def describe(self) -> str:
        by_part: Dict[str, int] = {}
        for name in self.targets:
            by_part[part_of(name) or "other"] = by_part.get(part_of(name) or "other", 0) + 1
        parts = ", ".join(f"{p}: {n}" for p, n in by_part.items())
        return f"LoRA r={self.config.rank} alpha={self.config.alpha} on {len(self.targets)} modules ({parts})"


def base_fingerprint(model: nn.Module) -> str:
    """A hash of the base architecture: every base parameter's name and shape.

    Names are taken as in the stock model (LoRA wrappers' ``base_layer.`` removed),
    so the fingerprint is the same before and after injection.
    """
    h = hashlib.sha256()
    for name, shape in sorted(_base_shapes(model).items()):
        h.update(f"{name}:{tuple(shape)};".encode())
    return h.hexdigest()[:16]


def base_weights_fingerprint(model: nn.Module, modules_to_save: Sequence[str] = ()) -> str:
    """A hash of the frozen base weights' values, so an adapter can tell the base it was trained on
    from another of the same architecture (another checkpoint, seed or fine-tune).

    Reads every frozen base parameter (LoRA matrices and ``modules_to_save``, which the adapter
    replaces, left out) by stock name and shape, and up to ``WEIGHT_SAMPLES`` of its values at
    a fixed integer stride, as float32 bytes: exact values (no arithmetic), so the same on any
    device; 4.5M values of 1102 tensors for the 840M model, ~60 ms on a CPU against ~3.4 s to
    hash all 3.4 GB. Retraining changes nearly every value, so it is caught; an edit confined
    to values between the samples is not.
    """
    skip = {id(p) for p in lora_parameters(model)}
    skip |= {id(p) for n, p in model.named_parameters() if any(_within(stock_name(n), m) for m in modules_to_save)}
    params = {stock_name(n): p for n, p in model.named_parameters() if id(p) not in skip}
    h = hashlib.sha256()
    for name in sorted(params):
        flat = params[name].detach().reshape(-1)
        if flat.numel() > WEIGHT_SAMPLES:
            flat = flat[torch.arange(WEIGHT_SAMPLES, device=flat.device) * (flat.numel() // WEIGHT_SAMPLES)]
        h.update(f"{name}:{tuple(params[name].shape)};".encode())
        h.update(flat.to(device="cpu", dtype=torch.float32).numpy().tobytes())
    return h.hexdigest()[:16]


def _within(name: str, module: str) -> bool:
    return name.startswith(module + ".")


def stock_name(name: str) -> str:
    """A parameter's name in the stock (un-injected) model."""
    return name.replace(".base_layer.", ".").replace("base_layer.", "")


def _base_shapes(model: nn.Module) -> Dict[str, torch.Size]:
    lora_ids = {id(p) for p in lora_parameters(model)}
    return {stock_name(n): p.shape for n, p in model.named_parameters() if id(p) not in lora_ids}


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def inject_lora(model: nn.Module, config: LoraConfig) -> InjectionReport:
    """Wrap the planned modules with LoRA layers and freeze everything else.

    Load base weights before calling this: injection moves base parameters under
    ``base_layer.``. The report is also kept on the model as ``model.lora_report``.
    """
    if getattr(model, "lora_report", None) is not None:
        raise RuntimeError("this model already has LoRA injected; build a fresh model to inject another adapter")
    plan: TargetPlan = plan_targets(model, config)
    kw = dict(rank=config.rank, alpha=config.alpha, dropout=config.dropout, use_rslora=config.use_rslora)
    report = InjectionReport(
        config=config,
        base_fingerprint=base_fingerprint(model),
        base_weights_fingerprint=base_weights_fingerprint(model, plan.modules_to_save),
        modules_to_save=plan.modules_to_save,
    )
    for name, slices in plan.linear.items():
        base = model.get_submodule(name)
        _swap(model, name, LoraLinear(base, slices, **kw).to(base.weight.device))
        report.targets[name] = list(slices)
    for name, roles in plan.attention.items():
        base = model.get_submodule(name)
        _swap(model, name, LoraMultiheadAttention(base, roles, **kw).to(base.in_proj_weight.device))
        report.targets[name] = list(roles)

    model.requires_grad_(False)
    for p in lora_parameters(model):
        p.requires_grad_(True)
    for name in plan.modules_to_save:
        model.get_submodule(name).requires_grad_(True)
    model.lora_report = report
    return report


def lora_modules(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    return ((n, m) for n, m in model.named_modules() if isinstance(m, LORA_LAYERS))


def holds_adapters(module: nn.Module) -> bool:
    """Whether any LoRA layer sits in ``module`` (then ``adapters_off`` changes what it computes)."""
    return any(True for _ in lora_modules(module))


def lora_parameters(model: nn.Module) -> List[nn.Parameter]:
    return [p for m in model.modules() if isinstance(m, LoraDelta) for p in m.parameters()]


def adapter_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """What an adapter file holds: LoRA A/B matrices and the modules_to_save weights."""
    report: InjectionReport = model.lora_report
    keep = {id(p) for p in lora_parameters(model)}
    for name in report.modules_to_save:
        keep |= {id(p) for p in model.get_submodule(name).parameters()}
    return {n: p.detach() for n, p in model.named_parameters() if id(p) in keep}


def merge_lora(model: nn.Module) -> None:
    """Fold every update into its base weight (inference at the base model's speed)."""
    for _, m in lora_modules(model):
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    for _, m in lora_modules(model):
        m.unmerge()


def set_adapter_scale(model: nn.Module, scale: float) -> None:
    """Weigh every adapter's update by ``scale``: 0 is the base model, 1 the model as trained, between
    them the tuned model pulled towards its base (WiSE-FT's interpolation, for LoRA: the same as
    interpolating the weights). A merged layer is re-merged at the new scale; nothing is copied."""
    for _, m in lora_modules(model):
        if m.adapter_scale == scale:
            continue
        merged = m.merged
        if merged:
            m.unmerge()
        m.adapter_scale = float(scale)
        if merged:
            m.merge()


def adapter_scale(model: nn.Module) -> Optional[float]:
    """The scale the adapters are at (None without LoRA)."""
    scales = {m.adapter_scale for _, m in lora_modules(model)}
    if len(scales) > 1:
        raise ValueError(f"the adapters are at different scales {sorted(scales)}; set one with set_adapter_scale")
    return scales.pop() if scales else None


@contextlib.contextmanager
def adapters_off(model: nn.Module) -> Iterator[nn.Module]:
    """The base model inside the tuned one: every adapter switched off (its update not computed at
    all, so the outputs are the base's), and back to its scale on exit. Nothing is copied."""
    previous = {m: m.adapter_scale for _, m in lora_modules(model)}
    set_adapter_scale(model, 0.0)
    try:
        yield model
    finally:
        for m, scale in previous.items():
            merged = m.merged
            if merged:
                m.unmerge()
            m.adapter_scale = scale
            if merged:
                m.merge()


def parameter_summary(model: nn.Module) -> str:
    """Trainable and total parameters per SAM3 part, as a small table."""
    rows: Dict[str, List[int]] = {p: [0, 0] for p in [*PARTS, "other"]}
    for name, p in model.named_parameters():
        row = rows[part_of(name) or "other"]
        row[0] += p.numel() if p.requires_grad else 0
        row[1] += p.numel()
    total_train = sum(r[0] for r in rows.values())
    total = sum(r[1] for r in rows.values())
    lines = [f"{'part':<14}{'trainable':>14}{'total':>16}{'%':>9}"]
    for part, (t, n) in rows.items():
        if n:
            lines.append(f"{part:<14}{t:>14,}{n:>16,}{100 * t / n:>8.3f}%")
    lines.append(f"{'all':<14}{total_train:>14,}{total:>16,}{100 * total_train / max(total, 1):>8.3f}%")
    return "\n".join(lines)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merged_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The model's weights with every update folded in, under the stock module names:
    what a plain SAM3 built without sam3_lora loads. The model is left unmerged."""
    merge_lora(model)
    try:
        lora_ids = {id(p) for p in lora_parameters(model)}
        names = {id(p): n for n, p in model.named_parameters() if id(p) in lora_ids}
        state = {
            stock_name(k): v.detach().clone() for k, v in model.state_dict(keep_vars=True).items() if id(v) not in names
        }
    finally:
        unmerge_lora(model)
    return state
