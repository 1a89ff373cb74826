"""Base weights in transformers' layout: a ``Sam3Model`` folder (``config.json`` + ``model.safetensors``,
or a sharded ``model.safetensors.index.json``) or its ``model.safetensors``, as ``model.checkpoint_path``.

The Hub's ``facebook/sam3`` keeps the image model under ``detector_model.`` beside the video tracker
(``tracker_model.``, ``tracker_neck.``); a folder written by ``Sam3Model.save_pretrained`` or by
``export format=transformers`` has no prefix. Both are read; the tracker is named and left out.
The weights are converted to sam3's layout with the key map on load (safetensors only: no
transformers install needed). Nothing in the folder is executed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

import sam3_lora.models.transformers_keymap as keymap
from sam3_lora.core.documents import Fields, Kind, MapOf, Nullable, read_json
from sam3_lora.core.errors import UserError
from sam3_lora.core.finite import require_finite

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
CONFIG = "config.json"
# The Hub's combined (video) checkpoint: Sam3VideoModel's image detector, then the tracker.
DETECTOR_PREFIX = "detector_model."
TRACKER_PREFIXES = ("tracker_model.", "tracker_neck.")
TRACKER_REASON = "the video tracker (Sam3VideoModel), not part of the image model"
# Top-level modules of Sam3Model: how a bare model.safetensors is told from other safetensors files.
SAM3_MODEL_MODULES = ("vision_encoder.", "text_encoder.", "detr_encoder.", "detr_decoder.", "mask_decoder.")
SAM3_MODEL_TYPES = ("sam3", "sam3_video")
INDEX_SHAPE = Fields({"weight_map": MapOf(Kind(str))}, required=("weight_map",))  # tensor name -> shard file
CONFIG_SHAPE = Fields({"model_type": Nullable(Kind(str))})
DOWNLOAD_AGAIN = "Download or export the checkpoint again (a transformers SAM3 folder as save_pretrained writes it)"


class TransformersCheckpointError(UserError, ValueError):
    """A transformers-format checkpoint that cannot be used as SAM3 base weights."""


def _safetensors_keys(path: Path) -> List[str]:
    """The tensor names of a safetensors file; none when it is not one (its reader says why later)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except (SafetensorError, OSError):
        return []


def _looks_like_sam3_model(keys: List[str]) -> bool:
    return any(k.removeprefix(DETECTOR_PREFIX).startswith(SAM3_MODEL_MODULES) for k in keys)


def weight_files(path) -> Optional[List[Path]]:
    """The safetensors files of a transformers SAM3 checkpoint at ``path`` (a folder, its
    ``model.safetensors`` or its ``model.safetensors.index.json``); None when ``path`` is not one."""
    path = Path(path)
    if path.is_dir():
        if (path / WEIGHTS_INDEX).is_file():
            return weight_files(path / WEIGHTS_INDEX)
        return [path / WEIGHTS] if (path / WEIGHTS).is_file() else None
    if path.is_file() and path.name.endswith(".index.json"):
        index = read_json(path, "safetensors index", DOWNLOAD_AGAIN, INDEX_SHAPE, TransformersCheckpointError)
        shards = sorted(set(index["weight_map"].values()))
        folder = path.parent.resolve()
        outside = [s for s in shards if not (path.parent / s).resolve().is_relative_to(folder)]
        if outside:  # a shard is a file of this checkpoint, never one elsewhere on the machine
            raise TransformersCheckpointError(
                f"{path} lists shards outside its folder: {outside[:5]}. {DOWNLOAD_AGAIN}"
            )
        missing = [s for s in shards if not (path.parent / s).is_file()]
        if missing:
            raise TransformersCheckpointError(f"{path} lists shards that are not beside it: {missing}")
        return [path.parent / s for s in shards]
    if path.is_file() and path.suffix == ".safetensors" and _looks_like_sam3_model(_safetensors_keys(path)):
        return [path]
    return None


def _check_config(folder: Path) -> None:
    config = folder / CONFIG
    if not config.is_file():
        return
    model_type = read_json(
        config, "transformers config", DOWNLOAD_AGAIN, CONFIG_SHAPE, TransformersCheckpointError
    ).get("model_type")
    if model_type not in SAM3_MODEL_TYPES:
        raise TransformersCheckpointError(
            f"{config} describes a '{model_type}' model, not SAM3 ({' or '.join(SAM3_MODEL_TYPES)}); "
            "model.checkpoint_path expects sam3.pt or a transformers SAM3 folder"
        )


def read_state(path) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """(Sam3Model's state_dict, tensors left out -> why) of the transformers checkpoint at ``path``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    files = weight_files(path)
    if files is None:
        raise TransformersCheckpointError(
            f"{path} is not a transformers SAM3 checkpoint (a folder with {WEIGHTS} or {WEIGHTS_INDEX}, or a "
            f"{WEIGHTS} holding Sam3Model's weights)"
        )
    _check_config(files[0].parent)
    state, left_out = {}, {}
    for file in files:
        try:
            tensors = load_file(str(file))
        except (SafetensorError, OSError) as e:
            raise TransformersCheckpointError(
                f"{file} is not a readable safetensors file ({e}); download or export it again"
            ) from e
        require_finite(tensors, file, "transformers SAM3 weights file")
        for name, tensor in tensors.items():
            if name.startswith(TRACKER_PREFIXES):
                left_out[name] = TRACKER_REASON
            else:
                state[name.removeprefix(DETECTOR_PREFIX)] = tensor
    return state, left_out


def load_transformers_checkpoint(model: nn.Module, path) -> None:
    """Load transformers-format SAM3 weights into our (sam3-layout) ``model``, converting on the way.

    Every tensor the model needs must come from the file except those transformers has no
    counterpart for: the RoPE buffers (the model computes its own) and the point-prompt encoder,
    which is set to zero so the base is the same on every build (this package never sends point
    prompts). Tensors of another size, missing or unknown ones stop the load, naming them.
    """
    state, left_out = read_state(path)
    try:
        converted = keymap.to_sam3(state)
    except keymap.KeyMapError as e:
        raise TransformersCheckpointError(f"{path}: {e}") from e
    expected = model.state_dict()
    unexpected = sorted(set(converted.tensors) - set(expected))
    missing = sorted(set(expected) - set(converted.tensors))
    kept_by_model = keymap.no_counterpart(missing)
    really_missing = [n for n in missing if n not in kept_by_model]
    if unexpected or really_missing:
        raise TransformersCheckpointError(
            f"{path} does not fit this model: "
            + "; ".join(
                f"{what} {names[:5]}{' ...' if len(names) > 5 else ''}"
                for what, names in (("weights the model lacks:", unexpected), ("weights missing:", really_missing))
                if names
            )
            + " (a checkpoint of another SAM3 size? model=sam3 is the stock 840M model)"
        )
    for name, tensor in converted.tensors.items():
        if tensor.shape != expected[name].shape:
            raise TransformersCheckpointError(
                f"{path} does not fit this model: {name} is {tuple(tensor.shape)} in the checkpoint and "
                f"{tuple(expected[name].shape)} in the model (a checkpoint of another SAM3 size? model=sam3 is the "
                "stock 840M model)"
            )
    notes = dict(left_out)
    with torch.no_grad():
        for name, reason in kept_by_model.items():
            if keymap.is_derived(name):
                notes[name] = f"{reason}; the model's own"
            else:
                expected[name].zero_()
                notes[name] = f"{reason}; set to zero"
    model.load_state_dict(converted.tensors, strict=False)
    notes.update(converted.filled)
    log.info(
        "loaded transformers-format SAM3 weights from %s (%d tensors); without a counterpart:\n  %s",
        path,
        len(state),
        "\n  ".join(keymap.summarise(notes)) or "none",
    )
