"""Which SAM3 modules get LoRA, and on which slices: the vocabulary mapped onto SAM3.

SAM3 has no separate q/k/v projections. q, k and v are row slices of the ViT's
fused ``attn.qkv`` Linear and of every ``nn.MultiheadAttention``'s ``in_proj_weight``;
``out_proj`` is the ViT's ``attn.proj`` or an attention module's ``out_proj``; the FFN
layers are ``linear1/linear2`` (encoder, decoder, geometry), ``mlp.fc1/fc2`` (ViT) and
``mlp.c_fc/c_proj`` (text encoder).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from torch import nn

from sam3_lora.lora.config import PARTS, LoraConfig, LoraConfigError

QKV_TARGETS = {"q_proj": "q", "k_proj": "k", "v_proj": "v"}
FFN_SUFFIXES = {
    "linear1": ("linear1", "mlp.fc1", "mlp.c_fc"),
    "linear2": ("linear2", "mlp.fc2", "mlp.c_proj"),
}
VIT_QKV_SUFFIX = "attn.qkv"
VIT_PROJ_SUFFIX = "attn.proj"


def part_of(name: str) -> Optional[str]:
    for part, prefix in PARTS.items():
        if name.startswith(prefix):
            return part
    return None


@dataclass
class TargetPlan:
    """Module name -> what to adapt. Linear: row slices; attention: q/k/v/out."""

    linear: Dict[str, Dict[str, Tuple[int, int]]] = field(default_factory=dict)
    attention: Dict[str, Tuple[str, ...]] = field(default_factory=dict)
    modules_to_save: Tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.linear) + len(self.attention)


def _linear_slices(name: str, layer: nn.Linear, targets) -> Dict[str, Tuple[int, int]]:
    if name.endswith(VIT_QKV_SUFFIX):
        d = layer.out_features // 3
        rows = {"q": (0, d), "k": (d, 2 * d), "v": (2 * d, 3 * d)}
        return {s: rows[s] for t, s in QKV_TARGETS.items() if t in targets}
    if name.endswith(VIT_PROJ_SUFFIX) and "out_proj" in targets:
        return {"full": (0, layer.out_features)}
    for target, suffixes in FFN_SUFFIXES.items():
        if target in targets and name.endswith(suffixes):
            return {"full": (0, layer.out_features)}
    return {}


def _roles_to_targets(roles) -> set:
    inverse = {v: k for k, v in QKV_TARGETS.items()}
    return {inverse.get(r, "out_proj") for r in roles}


def plan_targets(model: nn.Module, config: LoraConfig) -> TargetPlan:
    """Resolve a LoraConfig against a model; a target or part that matches nothing is an error."""
    plan = TargetPlan()
    regex = re.compile(config.target_regex) if config.target_regex else None
    attention_out_proj = {f"{n}.out_proj" for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    target_hits, part_hits = set(), set()
    for name, module in model.named_modules():
        part = part_of(name)
        in_part = part in config.parts
        if isinstance(module, nn.MultiheadAttention):
            roles = [s for t, s in QKV_TARGETS.items() if t in config.targets]
            roles += ["out"] if "out_proj" in config.targets else []
            if in_part and roles:
                plan.attention[name] = tuple(roles)
                target_hits |= _roles_to_targets(roles)
                part_hits.add(part)
            elif regex and regex.search(name):
                plan.attention[name] = ("q", "k", "v", "out")
        elif isinstance(module, nn.Linear) and name not in attention_out_proj:
            slices = _linear_slices(name, module, config.targets) if in_part else {}
            if slices:
                plan.linear[name] = slices
                part_hits.add(part)
                if "full" in slices:
                    target_hits |= {t for t, sfx in FFN_SUFFIXES.items() if name.endswith(sfx)}
                    target_hits |= {"out_proj"} if name.endswith(VIT_PROJ_SUFFIX) else set()
                else:
                    target_hits |= _roles_to_targets(slices)
            elif regex and regex.search(name):
                plan.linear[name] = {"full": (0, module.out_features)}

    where = f"in parts {config.parts} ({', '.join(PARTS[p] + '*' for p in config.parts)})"
    missing_targets = [t for t in config.targets if t not in target_hits]
    if missing_targets:
        raise LoraConfigError(
            f"LoRA target(s) {missing_targets} match no module {where}. "
            f"Valid parts: {', '.join(PARTS)}; the segmentation head has attention but no FFN."
        )
    missing_parts = [p for p in config.parts if p not in part_hits] if config.targets else []
    if missing_parts:
        raise LoraConfigError(f"LoRA part(s) {missing_parts} contain no module for targets {config.targets}")
    if regex and not any(regex.search(n) for n in [*plan.linear, *plan.attention]):
        raise LoraConfigError(
            f"lora.target_regex '{config.target_regex}' matches no nn.Linear or nn.MultiheadAttention "
            "module (it is searched in full module names such as 'transformer.decoder.layers.0.linear1')"
        )
    plan.modules_to_save = tuple(_match_modules_to_save(model, config.modules_to_save))
    return plan


def _match_modules_to_save(model: nn.Module, wanted) -> list:
    names = [n for n, _ in model.named_modules() if n]
    matched = []
    for entry in wanted:
        hits = [n for n in names if n == entry or n.endswith("." + entry)]
        if not hits:
            raise LoraConfigError(
                f"lora.modules_to_save entry '{entry}' names no module; give a module name such as "
                "'dot_prod_scoring' or 'transformer.decoder.bbox_embed'"
            )
        matched.extend(h for h in hits if not any(h.startswith(m + ".") for m in matched))
    return matched
