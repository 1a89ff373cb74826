"""Adapter files: safetensors weights plus metadata that says what they are.

The metadata names the format, the LoRA config, the adapted modules, the base
model (config name, an architecture fingerprint and a fingerprint of its weights)
and the versions that wrote it, so an adapter describes itself, cannot be taken
for a full SAM3 checkpoint, and is refused with a clear reason by a model it does
not fit, including a base of the same architecture with other weights.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Dict, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from sam3_lora.core.atomic_files import atomic_write
from sam3_lora.core.conf import model_option
from sam3_lora.core.errors import UserError
from sam3_lora.core.finite import require_finite
from sam3_lora.lora.config import LoraConfig
from sam3_lora.lora.inject import adapter_state_dict, base_fingerprint, base_weights_fingerprint, inject_lora

log = logging.getLogger(__name__)

FORMAT = "sam3_lora.adapter"
FORMAT_VERSION = "1"


class AdapterError(UserError, ValueError):
    """An adapter file that is unreadable, not an adapter, or does not fit the model."""


def _version(package: str) -> str:
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class AdapterInfo:
    """The metadata block of an adapter file."""

    config: LoraConfig
    targets: Dict[str, list]
    modules_to_save: list
    base_model: str
    base_fingerprint: str  # architecture: parameter names and shapes
    versions: Dict[str, str]
    base_weights_fingerprint: Optional[str] = None  # the base weights' values; None: the file records none

    def to_metadata(self) -> Dict[str, str]:
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "lora_config": json.dumps(self.config.to_dict()),
            "targets": json.dumps(self.targets),
            "modules_to_save": json.dumps(self.modules_to_save),
            "base_model": self.base_model,
            "base_fingerprint": self.base_fingerprint,
            "versions": json.dumps(self.versions),
        }
        if self.base_weights_fingerprint:
            meta["base_weights_fingerprint"] = self.base_weights_fingerprint
        return meta

    @classmethod
    def from_metadata(cls, meta: Optional[Dict[str, str]], path) -> "AdapterInfo":
        if not meta or meta.get("format") != FORMAT:
            raise AdapterError(
                f"{path} is not a sam3_lora adapter (no '{FORMAT}' metadata). A SAM3 checkpoint goes in "
                "model.checkpoint_path; a PEFT adapter directory is not loaded here."
            )
        try:
            return cls(
                config=LoraConfig.from_dict(json.loads(meta["lora_config"])),
                targets=json.loads(meta["targets"]),
                modules_to_save=json.loads(meta.get("modules_to_save", "[]")),
                base_model=meta.get("base_model", "unknown"),
                base_fingerprint=meta["base_fingerprint"],
                versions=json.loads(meta.get("versions", "{}")),
                base_weights_fingerprint=meta.get("base_weights_fingerprint"),
            )
        except (KeyError, json.JSONDecodeError) as e:
            raise AdapterError(f"{path}: adapter metadata is incomplete or corrupt ({e!r})") from e


def save_adapter(model: nn.Module, path, base_model: str) -> Path:
    """Write the model's adapter atomically (temp file + rename): a crash never leaves half a file."""
    report = model.lora_report
    info = AdapterInfo(
        config=report.config,
        targets=report.targets,
        modules_to_save=list(report.modules_to_save),
        base_model=base_model,
        base_fingerprint=report.base_fingerprint,
        versions={p: _version(p) for p in ("sam3_lora", "sam3", "torch")},
        base_weights_fingerprint=report.base_weights_fingerprint,
    )
    tensors = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model).items()}
    return atomic_write(
        path,
        lambda tmp: save_file(tensors, tmp, metadata=info.to_metadata()),
        nbytes=sum(t.numel() * t.element_size() for t in tensors.values()),
        errors=(SafetensorError,),
    )


def read_adapter(path) -> tuple[AdapterInfo, Dict[str, torch.Tensor]]:
    """Read an adapter file; errors name the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"adapter file not found: {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        info = AdapterInfo.from_metadata(meta, path)
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise AdapterError(
            f"{path} is not a readable safetensors adapter ({e}); if it was being written when a run stopped, "
            "use the previous checkpoint"
        ) from e
    require_finite(tensors, path, "adapter")
    return info, tensors


def _model_flag(base_model: str) -> str:
    """How to ask for ``base_model`` on the command line (``tiny_toy`` -> ``model=sam3_tiny_toy``)."""
    option = model_option(base_model)
    return f"model={option}" if option else f"a model config with name: {base_model}"


def load_adapter(model: nn.Module, path, allow_base_mismatch: bool = False) -> AdapterInfo:
    """Inject the adapter's LoRA layout into ``model`` (if not already there) and load its weights.

    Refuses, naming the mismatch, an adapter made for another architecture, another
    rank or target set, with tensors of the wrong shape, or trained on other base weights
    (unless ``allow_base_mismatch``). Adapters written before the weights fingerprint
    existed load with a warning.
    """
    info, tensors = read_adapter(path)
    current = base_fingerprint(model)
    if info.base_fingerprint != current:
        raise AdapterError(
            f"{path} was trained on base model '{info.base_model}' (architecture {info.base_fingerprint}); "
            f"this model's architecture is {current}. Load it onto the model it was made for "
            f"({_model_flag(info.base_model)})."
        )
    report = getattr(model, "lora_report", None)
    if report is None:
        report = inject_lora(model, info.config)
    if report.config.to_dict() != info.config.to_dict() or report.targets != info.targets:
        diff = {
            k: (v, report.config.to_dict().get(k))
            for k, v in info.config.to_dict().items()
            if report.config.to_dict().get(k) != v
        }
        raise AdapterError(
            f"{path} does not fit this model's LoRA layout: adapter vs model "
            + (", ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in diff.items()) or "target modules differ")
            + ". Build the model without injecting LoRA and let load_adapter inject the adapter's own layout."
        )
    expected = adapter_state_dict(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise AdapterError(f"{path}: missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}")
    for name, value in tensors.items():
        if value.shape != expected[name].shape:
            raise AdapterError(
                f"{path}: tensor {name} has shape {tuple(value.shape)}, the model expects {tuple(expected[name].shape)}"
            )
    _check_base_weights(model, info, path, allow_base_mismatch)
    with torch.no_grad():
        for name, value in tensors.items():
            expected[name].copy_(value)
    return info


def _check_base_weights(model: nn.Module, info: AdapterInfo, path, allow_base_mismatch: bool) -> None:
    if info.base_weights_fingerprint is None:
        log.warning(
            "%s records no base weights fingerprint (written by sam3_lora %s): loaded without checking that "
            "this base has the weights it was trained on",
            path,
            info.versions.get("sam3_lora", "unknown"),
        )
        return
    current = base_weights_fingerprint(model, info.modules_to_save)
    if current == info.base_weights_fingerprint:
        return
    mismatch = (
        f"{path} was trained on base weights {info.base_weights_fingerprint} (model '{info.base_model}'), "
        f"this model's base weights are {current}"
    )
    if allow_base_mismatch:
        log.warning("%s; loaded anyway (allow_base_mismatch): expect predictions unlike the trained run's", mismatch)
        return
    raise AdapterError(
        f"{mismatch}: same architecture, other weights (another checkpoint, seed or fine-tune, or a model "
        f"this adapter is already merged into), where the adapter gives wrong predictions. Load it onto the base "
        f"it was trained on ({_model_flag(info.base_model)} with the training run's checkpoint_path, or "
        f"run_dir=<its training run>), or set allow_base_mismatch=true "
        f"(load_adapter(..., allow_base_mismatch=True)) to load it anyway."
    )
