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
from sam3_lora.core.documents import Fields, FiniteNumber, Kind, ListOf, MapOf, Nullable, Shape, parse_json_text
from sam3_lora.core.errors import UserError
from sam3_lora.core.finite import require_finite
from sam3_lora.lora.config import LoraConfig, LoraConfigError
from sam3_lora.lora.inject import adapter_state_dict, base_fingerprint, base_weights_fingerprint, inject_lora

log = logging.getLogger(__name__)

FORMAT = "sam3_lora.adapter"
FORMAT_VERSION = "1"


class AdapterError(UserError, ValueError):
    """An adapter file that is unreadable, not an adapter, or does not fit the model."""


# The metadata values that are JSON documents, as save_adapter writes them: (key, shape, default).
_NAMES = ListOf(Kind(str))
_LORA_CONFIG = Fields(
    {
        "rank": Kind(int),
        "alpha": FiniteNumber(),
        "dropout": FiniteNumber(),
        "use_rslora": Kind(bool),
        "targets": _NAMES,
        "parts": _NAMES,
        "target_regex": Nullable(Kind(str)),
        "modules_to_save": _NAMES,
    },
    required=("rank", "alpha"),
)
_JSON_METADATA: Dict[str, tuple] = {
    "lora_config": (_LORA_CONFIG, None),
    "targets": (MapOf(_NAMES), None),  # adapted module -> its updates (slices or attention roles)
    "modules_to_save": (_NAMES, "[]"),
    "versions": (MapOf(Kind(str)), "{}"),
}
METADATA_FIX = "It was not written by sam3_lora's save_adapter, or was edited since: use the run's own adapter file"


def _json_metadata(text: str, key: str, shape: Shape, path):
    """One metadata value, a JSON document of ``shape``; errors name the file and the key."""
    where = f"{path} (metadata '{key}')"
    return parse_json_text(text, where, "adapter metadata value", METADATA_FIX, shape, AdapterError)


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
        required = [k for k, (_, default) in _JSON_METADATA.items() if default is None] + ["base_fingerprint"]
        missing = [k for k in required if k not in meta]
        if missing:
            raise AdapterError(f"{path}: adapter metadata is incomplete: no {', '.join(missing)}. {METADATA_FIX}")
        values = {
            key: _json_metadata(meta.get(key, default), key, shape, path)
            for key, (shape, default) in _JSON_METADATA.items()
        }
        try:
            config = LoraConfig.from_dict(values["lora_config"])
        except LoraConfigError as e:
            raise AdapterError(f"{path} (metadata 'lora_config'): {e}. {METADATA_FIX}") from e
        return cls(
            config=config,
            targets=values["targets"],
            modules_to_save=values["modules_to_save"],
            base_model=meta.get("base_model", "unknown"),
            base_fingerprint=meta["base_fingerprint"],
            versions=values["versions"],
            base_weights_fingerprint=meta.get("base_weights_fingerprint"),
        )


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
            _require_tensors_fit_metadata(info, {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, path)
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise AdapterError(
            f"{path} is not a readable safetensors adapter ({e}); if it was being written when a run stopped, "
            "use the previous checkpoint"
        ) from e
    require_finite(tensors, path, "adapter")
    return info, tensors


def _require_tensors_fit_metadata(info: AdapterInfo, shapes: Dict[str, tuple], path) -> None:
    """The metadata's LoRA layout is the file's tensors: an A (rank x in) and a B (out x rank) per
    update it lists, at its rank, and nothing else but modules_to_save weights. Checked before
    anything is allocated from the metadata (inject_lora builds rank-sized matrices)."""
    rank, found = info.config.rank, []
    lora_names = set()
    for module, updates in info.targets.items():
        for update in updates:
            for matrix, rank_dim in (("lora_A", 0), ("lora_B", 1)):
                name = f"{module}.lora.{update}.{matrix}"
                lora_names.add(name)
                shape = shapes.get(name)
                if shape is None:
                    found.append(f"no tensor {name} (metadata 'targets' lists it)")
                elif len(shape) != 2 or shape[rank_dim] != rank:
                    found.append(f"{name} has shape {shape}, not rank {rank} (metadata 'lora_config')")
    saved = tuple(f"{m}." for m in info.modules_to_save)
    extra = sorted(n for n in shapes if n not in lora_names and not n.startswith(saved))
    if extra:
        found.append(f"tensors the metadata does not list: {extra[:5]}{' ...' if len(extra) > 5 else ''}")
    if found:
        raise AdapterError(f"{path}: metadata and tensors disagree: {'; '.join(found[:5])}. {METADATA_FIX}")


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
