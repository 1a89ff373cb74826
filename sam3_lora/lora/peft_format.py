"""Hugging Face PEFT's adapter format (``adapter_config.json`` + ``adapter_model.safetensors``).

PEFT's LoRA on a Linear is one update over the whole weight. sam3_lora's per-slice q/k/v
updates on a packed weight convert *exactly*: stacking the slices' A matrices and
placing their B matrices block-diagonally gives one update of rank n·r whose product is
the sum of the slice updates; ``rank_pattern`` / ``alpha_pattern`` carry that module's
rank and scale. Attention modules (``nn.MultiheadAttention``) have no exact PEFT
counterpart — PEFT's own support for them is experimental — and neither do
``modules_to_save`` here: both are listed, and exporting them is refused unless a
partial adapter is asked for.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from sam3_lora.core.atomic_files import atomic_write, atomic_write_json, tensor_bytes, written_together
from sam3_lora.core.errors import UserError
from sam3_lora.lora.config import LoraConfig
from sam3_lora.lora.inject import lora_modules
from sam3_lora.lora.layers import LoraLinear

PEFT_PREFIX = "base_model.model."
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"  # PEFT's file names


class PeftExportError(UserError, ValueError):
    """The adapter holds updates that PEFT's format cannot express."""


def _packed(layer: LoraLinear) -> Tuple[torch.Tensor, torch.Tensor, int, float]:
    """(A, B, rank, scale) of one update equal to the sum of the layer's slice updates."""
    deltas = [layer.lora[name] for name in layer.slices]
    r, scale = deltas[0].rank, deltas[0].scale
    A = torch.cat([d.lora_A.detach() for d in deltas])
    B = torch.zeros(layer.base_layer.out_features, r * len(deltas))
    for i, (name, (start, stop)) in enumerate(layer.slices.items()):
        B[start:stop, i * r : (i + 1) * r] = layer.lora[name].lora_B.detach()
    return A.contiguous(), B.contiguous(), r * len(deltas), scale


def peft_lora_config(
    cfg: LoraConfig,
    target_modules: List[str],
    rank_pattern: Optional[Dict[str, int]] = None,
    alpha_pattern: Optional[Dict[str, float]] = None,
    modules_to_save: Optional[List[str]] = None,
    base_model_name_or_path: Optional[str] = None,
) -> dict:
    """PEFT's ``adapter_config.json`` for a LoRA config of ours on the named modules (full names)."""
    return {
        "peft_type": "LORA",
        "task_type": None,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "use_rslora": cfg.use_rslora,
        "bias": "none",
        "target_modules": target_modules,
        "rank_pattern": rank_pattern or {},
        "alpha_pattern": alpha_pattern or {},
        "init_lora_weights": True,
        "fan_in_fan_out": False,
        "modules_to_save": modules_to_save or None,
        "base_model_name_or_path": base_model_name_or_path,
    }


def peft_adapter(model: nn.Module, allow_partial: bool = False) -> Tuple[dict, Dict[str, torch.Tensor], List[str]]:
    """(adapter_config, tensors, left_out) for ``model``'s injected LoRA."""
    report = model.lora_report
    cfg = report.config
    left_out = [n for n, m in lora_modules(model) if not isinstance(m, LoraLinear)]
    left_out += [f"{n} (modules_to_save)" for n in report.modules_to_save]
    if left_out and not allow_partial:
        raise PeftExportError(
            f"{len(left_out)} adapted module(s) have no exact PEFT form: {left_out[:4]}"
            f"{' ...' if len(left_out) > 4 else ''}. nn.MultiheadAttention LoRA (q/k/v/out on in_proj/out_proj) and "
            "modules_to_save are not exported to PEFT. Export format=merged for a checkpoint stock sam3 loads, or set "
            "peft.allow_partial=true to write only the Linear updates (the model then behaves differently)."
        )
    tensors, targets, rank_pattern, alpha_pattern = {}, [], {}, {}
    for name, layer in lora_modules(model):
        if not isinstance(layer, LoraLinear):
            continue
        A, B, rank, scale = _packed(layer)
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = A
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = B
        targets.append(name)
        if rank != cfg.rank:
            rank_pattern[name] = rank
            # PEFT scales by alpha / r (or alpha / sqrt(r)); keep this module's scale exact.
            alpha_pattern[name] = scale * (math.sqrt(rank) if cfg.use_rslora else rank)
    if not targets:
        raise PeftExportError("no nn.Linear LoRA updates to export: every target is an attention module")
    config = peft_lora_config(cfg, targets, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern)
    return config, tensors, left_out


def save_peft_adapter(model: nn.Module, out_dir, allow_partial: bool = False) -> List[str]:
    """Write the PEFT files into ``out_dir``; return what was left out."""
    from safetensors.torch import save_file

    config, tensors, left_out = peft_adapter(model, allow_partial)
    out_dir = Path(out_dir)
    with written_together():  # the config and its weights land together
        atomic_write_json(out_dir / ADAPTER_CONFIG, config)
        atomic_write(out_dir / ADAPTER_WEIGHTS, lambda tmp: save_file(tensors, str(tmp)), tensor_bytes(tensors))
    return left_out
