"""A sam3_lora adapter as a PEFT adapter on transformers' ``Sam3Model`` (``export format=transformers-peft``):
``adapter_config.json`` + ``adapter_model.safetensors`` that
``peft.PeftModel.from_pretrained(Sam3Model.from_pretrained(base), folder)`` loads.

transformers' Sam3Model has a Linear for every projection sam3 packs or hides, so every update
converts exactly and at its own rank:

* a q, k or v update on a row slice of a packed weight (the ViT's ``attn.qkv``, an
  ``nn.MultiheadAttention``'s ``in_proj_weight``) -> LoRA on that role's own ``q_proj`` / ``k_proj`` /
  ``v_proj`` (same A, same B);
* an update over a whole packed weight (``lora.target_regex``) -> one update per role, B split by rows;
* ``out_proj`` (ViT ``attn.proj``, an attention's ``out_proj``) -> ``o_proj`` (``out_proj`` in CLIP's text
  encoder); FFN Linears -> their ``mlp.fc1`` / ``mlp.fc2``;
* ``modules_to_save`` -> the Sam3Model modules holding exactly the converted weights, saved in full.

Nothing is approximated: names and shapes are checked against an empty Sam3Model before writing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Tuple

import torch
from torch import nn

import sam3_lora.models.transformers_keymap as keymap
from sam3_lora.core.atomic_files import atomic_write, atomic_write_json, tensor_bytes, written_together
from sam3_lora.core.errors import UserError
from sam3_lora.hf.transformers_config import sam3_config
from sam3_lora.hf.transformers_model import SAFETENSORS_METADATA, empty_sam3_model, own_storage
from sam3_lora.lora.inject import lora_modules, stock_name
from sam3_lora.lora.layers import QKV, LoraDelta, LoraLinear
from sam3_lora.lora.peft_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_PREFIX, peft_lora_config
from sam3_lora.models.sizes import SAM3Size


class TransformersPeftError(UserError, ValueError):
    """An adapter that cannot be written as a PEFT adapter on transformers' Sam3Model."""


def _updates(model: nn.Module) -> Iterator[Tuple[str, int, slice, LoraDelta]]:
    """Every LoRA update: (sam3 weight name, its rows, the rows the update covers, the update)."""
    for name, layer in lora_modules(model):
        if isinstance(layer, LoraLinear):
            rows = layer.base_layer.out_features
            for slice_name, (start, stop) in layer.slices.items():
                yield f"{name}.weight", rows, slice(start, stop), layer.lora[slice_name]
        else:  # LoraMultiheadAttention: q/k/v on in_proj_weight's row thirds, out on out_proj
            e = layer.base_layer.embed_dim
            for role, delta in layer.lora.items():
                if role == "out":
                    yield f"{name}.out_proj.weight", e, slice(0, e), delta
                else:
                    i = QKV.index(role)
                    yield f"{name}.in_proj_weight", 3 * e, slice(i * e, (i + 1) * e), delta


def _lora_tensors(model: nn.Module) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """transformers module name -> (A, B) of its update."""
    out: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
    for weight, rows, covered, delta in _updates(model):
        A, B = delta.lora_A.detach(), delta.lora_B.detach()
        for hf_weight, hf_rows in keymap.counterparts(weight, rows):
            lo, hi = max(covered.start, hf_rows.start), min(covered.stop, hf_rows.stop)
            if lo >= hi:
                continue  # the update does not touch this projection
            module = hf_weight.removesuffix(".weight")
            if module in out:
                raise TransformersPeftError(f"{module} would receive two LoRA updates ({weight}); PEFT holds one")
            part = B.new_zeros(hf_rows.stop - hf_rows.start, B.shape[1])
            part[lo - hf_rows.start : hi - hf_rows.start] = B[lo - covered.start : hi - covered.start]
            out[module] = (A, part)
    return out


def _smallest_cover(wanted: List[str], params_under: Mapping[str, List[str]]) -> List[str]:
    """The fewest modules whose parameters are exactly ``wanted``: for each parameter, its highest
    ancestor module all of whose parameters are wanted."""
    wanted_set, chosen = set(wanted), []
    for param in sorted(wanted):
        parts = param.split(".")[:-1]
        for depth in range(1, len(parts) + 1):
            module = ".".join(parts[:depth])
            if set(params_under.get(module, ())) <= wanted_set:
                if module not in chosen:
                    chosen.append(module)
                break
        else:
            raise TransformersPeftError(f"{param}: no Sam3Model module holds only saved weights")
    return chosen


def _params_under(hf_model: nn.Module) -> Dict[str, List[str]]:
    under: Dict[str, List[str]] = {}
    for param in hf_model.state_dict():
        parts = param.split(".")[:-1]
        for depth in range(1, len(parts) + 1):
            under.setdefault(".".join(parts[:depth]), []).append(param)
    return under


def transformers_peft_adapter(
    model: nn.Module, size: SAM3Size, base_model_name_or_path=None
) -> Tuple[dict, Dict[str, torch.Tensor], Dict[str, str]]:
    """(adapter_config, tensors, left_out) of ``model``'s injected LoRA, keyed to Sam3Model."""
    report = model.lora_report
    cfg = report.config
    hf_model = empty_sam3_model(sam3_config(size))
    hf_modules = dict(hf_model.named_modules())
    tensors: Dict[str, torch.Tensor] = {}
    targets = []
    for module, (A, B) in sorted(_lora_tensors(model).items()):
        linear = hf_modules.get(module)
        if not isinstance(linear, nn.Linear) or tuple(linear.weight.shape) != (B.shape[0], A.shape[1]):
            raise TransformersPeftError(
                f"{module}: Sam3Model has {type(linear).__name__ if linear is not None else 'no such module'}"
                f"{'' if linear is None else ' ' + str(tuple(getattr(linear, 'weight', torch.empty(0)).shape))}, "
                f"the update is {(B.shape[0], A.shape[1])}"
            )
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = own_storage(A)
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = own_storage(B)
        targets.append(module)

    saved_state = {
        stock_name(n): p.detach()
        for n, p in model.named_parameters()
        if any(stock_name(n).startswith(m + ".") for m in report.modules_to_save)
    }
    lora_inside = [t for t in report.targets if any(t == m or t.startswith(m + ".") for m in report.modules_to_save)]
    if lora_inside:
        raise TransformersPeftError(
            f"LoRA targets inside modules_to_save ({lora_inside[:3]}): PEFT cannot both train a module in full "
            "and adapt it; export format=transformers (merged) instead"
        )
    converted = keymap.to_transformers(saved_state)
    modules_to_save = _smallest_cover(sorted(converted.tensors), _params_under(hf_model))
    for name, tensor in converted.tensors.items():
        tensors[f"{PEFT_PREFIX}{name}"] = own_storage(tensor)
    if not targets and not modules_to_save:
        raise TransformersPeftError("the adapter holds no LoRA update and no modules_to_save: nothing to export")
    config = peft_lora_config(
        cfg, targets, modules_to_save=modules_to_save, base_model_name_or_path=base_model_name_or_path
    )
    return config, tensors, converted.left_out


def save_transformers_peft(model: nn.Module, size: SAM3Size, out_dir, base_model_name_or_path=None) -> Dict[str, str]:
    """Write the PEFT files into ``out_dir``; return what was left out (name -> why)."""
    from safetensors.torch import save_file

    config, tensors, left_out = transformers_peft_adapter(model, size, base_model_name_or_path)
    out_dir = Path(out_dir)
    with written_together():  # the config and its weights land together
        atomic_write_json(out_dir / ADAPTER_CONFIG, config)
        atomic_write(
            out_dir / ADAPTER_WEIGHTS,
            lambda tmp: save_file(tensors, str(tmp), metadata=SAFETENSORS_METADATA),
            tensor_bytes(tensors),
        )
    return left_out
