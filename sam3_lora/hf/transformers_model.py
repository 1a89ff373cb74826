"""A SAM3 image model as a transformers folder: ``config.json`` + ``model.safetensors`` that
``transformers.Sam3Model.from_pretrained(folder)`` loads (``export format=transformers``).

The weights are the model's own (with any LoRA merged in), converted by the key map; the config
is built from the model's measured size. Before anything is written, the converted tensors are
checked name for name and shape for shape against an empty ``Sam3Model`` of that config (built on
the meta device: no memory, no time).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping

import torch
from torch import nn

import sam3_lora.models.transformers_keymap as keymap
from sam3_lora.core.errors import UserError
from sam3_lora.hf.transformers_config import require_transformers, sam3_config
from sam3_lora.models.sizes import SAM3Size
from sam3_lora.models.transformers_checkpoint import WEIGHTS

# safetensors metadata transformers expects on a PyTorch checkpoint.
SAFETENSORS_METADATA = {"format": "pt"}


class TransformersExportError(UserError, ValueError):
    """Weights that do not make the Sam3Model their config describes."""


def own_storage(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU tensor with storage of its own: safetensors refuses tensors sharing memory, and the key
    map's q/k/v parts are views of one packed weight."""
    tensor = tensor.detach().to("cpu").contiguous()
    return tensor.clone() if tensor._base is not None else tensor


def empty_sam3_model(config) -> nn.Module:
    """``transformers.Sam3Model(config)`` with no storage (meta tensors): its names, shapes and modules."""
    transformers = require_transformers("a transformers Sam3Model")
    with torch.device("meta"):
        return transformers.Sam3Model(config)


def check_against(model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """``tensors`` is exactly ``model``'s state_dict by name and shape, or the difference is named."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [
        f"{k} {tuple(tensors[k].shape)} (Sam3Model: {tuple(expected[k])})"
        for k in tensors
        if k in expected and tensors[k].shape != expected[k]
    ]
    if missing or unexpected or wrong:
        raise TransformersExportError(
            "the converted weights do not make transformers' Sam3Model: "
            + "; ".join(
                f"{what} {names[:4]}{' ...' if len(names) > 4 else ''}"
                for what, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                if names
            )
        )


def save_transformers_model(sam3_state: Mapping[str, torch.Tensor], size: SAM3Size, out_dir) -> Dict[str, str]:
    """Write ``config.json`` and ``model.safetensors`` into ``out_dir``; return what was left out
    (sam3 tensors with no counterpart in Sam3Model -> why)."""
    from safetensors.torch import save_file

    config = sam3_config(size)
    converted = keymap.to_transformers(sam3_state)
    tensors = {k: own_storage(v) for k, v in converted.tensors.items()}
    check_against(empty_sam3_model(config), tensors)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out_dir))
    save_file(tensors, str(out_dir / WEIGHTS), metadata=SAFETENSORS_METADATA)
    return converted.left_out
