"""The base weights: where they come from, and loading them after checking what the file is.

``sam3.pt`` (Meta's layout, the image model under ``detector.``) loads through sam3's own loader; a
transformers SAM3 folder or its ``model.safetensors`` (the Hub's transformers layout) is converted on
load (``sam3_lora/models/transformers_checkpoint.py``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

import sam3_lora.models.transformers_checkpoint as transformers_checkpoint
from sam3_lora.core.errors import UserError
from sam3_lora.core.finite import require_finite

HF_REPO = "facebook/sam3"


HF_CHECKPOINT = "sam3.pt"


class BaseCheckpointError(UserError, ValueError):
    """The base checkpoint (sam3.pt or transformers SAM3 weights) is missing, unreadable, or not SAM3's."""


def _transformers_weight_files(path):
    try:
        return transformers_checkpoint.weight_files(path)
    except transformers_checkpoint.TransformersCheckpointError as e:
        raise BaseCheckpointError(str(e)) from e


def resolve_checkpoint(checkpoint_path: Optional[str], load_from_hub: bool) -> Optional[str]:
    """Where the base weights come from: a file, the hub, or (for tests) nowhere."""
    if checkpoint_path:
        path = Path(os.path.expanduser(str(checkpoint_path)))
        if path.is_file() or (path.is_dir() and _transformers_weight_files(path)):
            return str(path)
        if path.is_dir():
            raise BaseCheckpointError(
                f"{path} is a folder without transformers SAM3 weights ({transformers_checkpoint.WEIGHTS} or "
                f"{transformers_checkpoint.WEIGHTS_INDEX}); model.checkpoint_path takes sam3.pt or a transformers "
                "SAM3 folder (Sam3Model.save_pretrained, or export format=transformers)"
            )
        if not load_from_hub:
            raise BaseCheckpointError(
                f"SAM3 checkpoint not found at '{path}'.\n"
                f"  Download {HF_CHECKPOINT} from https://huggingface.co/{HF_REPO} (gated: accept the licence "
                f"first, then `huggingface-cli download {HF_REPO} {HF_CHECKPOINT}`),\n"
                f"  then set model.checkpoint_path=/path/to/{HF_CHECKPOINT} "
                f"(or model.load_from_hub=true to download it when online).\n"
                f"  A transformers SAM3 folder (or its model.safetensors) works too: it is converted on load."
            )
    if load_from_hub:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(repo_id=HF_REPO, filename=HF_CHECKPOINT)
    return None


def load_base_checkpoint(model: nn.Module, checkpoint_path: str) -> None:
    """Load ``sam3.pt`` with sam3's own loader (it strips ``detector.``), or transformers-format
    SAM3 weights through the key map, after checking the file really is one of them rather
    than, say, a LoRA adapter."""
    from sam3.model_builder import _load_checkpoint

    if _transformers_weight_files(checkpoint_path):
        try:
            transformers_checkpoint.load_transformers_checkpoint(model, checkpoint_path)
        except transformers_checkpoint.TransformersCheckpointError as e:
            raise BaseCheckpointError(str(e)) from e
        return
    if str(checkpoint_path).endswith(".safetensors"):
        raise BaseCheckpointError(
            f"{checkpoint_path} is a safetensors file without transformers SAM3 weights; a sam3_lora adapter is "
            "loaded with adapter=path (evaluate, predict, export), and model.checkpoint_path expects the base sam3.pt "
            "or a transformers SAM3 folder (or its model.safetensors)."
        )
    try:
        # weights_only: tensors and plain containers only; a pickle that would run code is refused.
        ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise BaseCheckpointError(
            f"{checkpoint_path} is not a readable PyTorch checkpoint of tensors ({e}); "
            "model.checkpoint_path expects the base sam3.pt"
        ) from e
    if not isinstance(ckpt, dict):
        raise BaseCheckpointError(
            f"{checkpoint_path} holds a {type(ckpt).__name__}, not a SAM3 checkpoint (a dict of weights); "
            "model.checkpoint_path expects the base sam3.pt"
        )
    state = ckpt["model"] if isinstance(ckpt.get("model"), dict) else ckpt
    found = {k[len("detector.") :] for k in state if isinstance(k, str) and k.startswith("detector.")}
    expected = set(model.state_dict())
    if len(found & expected) < 0.5 * len(expected):
        raise BaseCheckpointError(
            f"{checkpoint_path} does not look like a SAM3 checkpoint for this model: {len(found & expected)} of "
            f"{len(expected)} weights found under 'detector.' (sam3.pt stores the image model there)."
        )
    require_finite(
        {k: v for k, v in state.items() if isinstance(k, str) and k.startswith("detector.")},
        checkpoint_path,
        "SAM3 checkpoint",
    )
    del ckpt, state
    try:
        _load_checkpoint(model, checkpoint_path)
    except RuntimeError as e:  # size mismatches
        raise BaseCheckpointError(
            f"{checkpoint_path} does not fit model '{getattr(model, 'image_size', '?')} px': {e}"
        ) from e
