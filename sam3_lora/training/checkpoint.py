"""Training checkpoints: adapter-only weights plus everything needed to resume exactly.

A checkpoint holds the trainable tensors (LoRA matrices and modules_to_save, or every
weight when fine-tuning in full), optimizer, scheduler, AMP scaler, RNG states, the
step counters and the run's resolved config, never the frozen base. It holds only
tensors and plain values (RNG states included), so it is read with
``torch.load(weights_only=True)``: a crafted file is refused, never executed.

Writes go to a temporary file in the same folder and are renamed into place, so a
crash, a full disk or a preemption never leaves a half-written ``last.pt`` behind;
temporary files of saves that were killed are removed when training starts.
"""

from __future__ import annotations

import json
import logging
import pickle
import random
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from sam3_lora.core.errors import UserError
from sam3_lora.core.finite import require_finite
from sam3_lora.runs import layout
from sam3_lora.runs.layout import BEST, CHECKPOINT_DIR, LAST  # noqa: F401 - ckpt.LAST etc. for callers
from sam3_lora.runs.renames import current_record

log = logging.getLogger(__name__)

FORMAT = "sam3_lora.training_checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("trainable", "optimizer", "scheduler", "scaler", "rng", "epoch", "step")
WHAT_RESUMES = (
    "A training checkpoint is <run dir>/checkpoints/last.pt (or best.pt, epoch_NNNN.pt); trainer.resume also "
    "takes the run directory itself."
)
# Settings a resumed run may change (dotted prefixes). The run length is honoured, its
# learning-rate schedule recomputed for the new length; the rest only say where or how
# often to log, how to find the checkpoint, and how many loader workers to use. Anything
# else would silently be trained with the checkpoint's optimizer, schedule and adapter.
RESUMABLE_CHANGES = (
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.resume",
    "trainer.auto_resume",
    "trainer.num_workers",
    "trainer.log_every",
    "trainer.text_cache",  # speed levers that leave the numbers as they are
    "trainer.compile",
    "trainer.stale_lock_s",
    "trainer.trunk_cache",
    "trainer.trunk_cache_memory_gb",
    "trainer.trunk_cache_dir",
    "logger",
    "model.cache_dir",
)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be written or read, or does not belong to this run."""


@dataclass
class Resume:
    """A training checkpoint to resume from, already read and checked."""

    path: Path
    state: Dict[str, Any]


# ---------------------------------------------------------------- RNG states as plain values
def rng_state() -> Dict[str, Any]:
    """Every random stream, as tensors and plain values (``weights_only`` loads them)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: Dict[str, torch.Tensor], path) -> None:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} was written for another LoRA layout: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}. Resume with the config of the run that wrote it (its .hydra/config.yaml)."
        )
    with torch.no_grad():
        for name, value in state.items():
            if params[name].shape != value.shape:
                raise CheckpointError(
                    f"checkpoint {path}: {name} has shape {tuple(value.shape)}, "
                    f"the model expects {tuple(params[name].shape)}"
                )
            params[name].copy_(value)


def restore_best(model: torch.nn.Module, run_dir: Path) -> Optional[Dict[str, Any]]:
    """Load ``best.pt``'s trainable weights into ``model``; return the validation that made them the
    best (``best.pt`` is written right after it: its history's last entry), or None without one."""
    return _restore(model, Path(run_dir) / CHECKPOINT_DIR / BEST)


def restore_last(model: torch.nn.Module, run_dir: Path) -> Optional[Dict[str, Any]]:
    """Load ``last.pt``'s trainable weights (the final step's) into ``model``; return its last
    validation (the final epoch always validates), or None without one."""
    return _restore(model, Path(run_dir) / CHECKPOINT_DIR / LAST)


def _restore(model: torch.nn.Module, path: Path) -> Optional[Dict[str, Any]]:
    if not path.is_file():
        return None
    state = load(path)
    load_trainable_state(model, state["trainable"], path)
    return (state.get("history") or [None])[-1]


# ---------------------------------------------------------------- reading
def find_resume_checkpoint(run_dir: Path, explicit: Optional[str]) -> Optional[Path]:
    """An explicit ``trainer.resume`` path, else ``last.pt`` already in this run directory."""
    if explicit:
        path = Path(explicit)
        if path.is_dir():
            path = path / CHECKPOINT_DIR / LAST
        if not path.is_file():
            raise CheckpointError(f"trainer.resume={explicit}: no checkpoint at {path}. {WHAT_RESUMES}")
        return path
    auto = Path(run_dir) / CHECKPOINT_DIR / LAST
    return auto if auto.is_file() else None


def find_resume(run_dir: Path, explicit: Optional[str], auto_resume: bool) -> Optional[Resume]:
    """The checkpoint this run continues (``trainer.resume``, else its own ``last.pt``), read and checked."""
    path = find_resume_checkpoint(run_dir, explicit) if (explicit or auto_resume) else None
    return Resume(path, load(path)) if path is not None else None


def _safetensors_kind(path: Path) -> Optional[str]:
    """What a safetensors file is, or None when ``path`` is not one."""
    from safetensors import SafetensorError, safe_open

    from sam3_lora.lora.adapter import FORMAT as ADAPTER_FORMAT

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError):
        return None
    if meta.get("format") == ADAPTER_FORMAT:
        hint = ""
        if (path.parent / CHECKPOINT_DIR / LAST).is_file():
            hint = f" The run that wrote it resumes with trainer.resume={path.parent}."
        return (
            "a sam3_lora adapter (the LoRA weights a run ships, without optimizer or schedule state; it is used "
            f"with adapter= by evaluate, predict and export).{hint}"
        )
    return "a safetensors weights file, not a training checkpoint."


def _refused_pickle(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a sam3_lora training checkpoint: it is {what}, which sam3_lora never unpickles because "
        f"loading it could run code. It was written by another program or an untrusted source; it was not loaded. "
        f"{WHAT_RESUMES}"
    )


def _unreadable(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is unreadable as a PyTorch file ({why}): truncated, or not a checkpoint at all. Delete it to start "
        f"over, or resume from another. {WHAT_RESUMES}"
    )


def _describe(obj: Any) -> str:
    """What a loaded PyTorch file that is not a training checkpoint is."""
    if not isinstance(obj, dict):
        return f"a PyTorch file holding a {type(obj).__name__}, not a training checkpoint."
    weights = obj.get("model") if isinstance(obj.get("model"), dict) else obj
    if any(str(k).startswith("detector.") for k in weights):
        return (
            "full SAM3 weights in sam3.pt's layout (a base checkpoint, a toy base, or a lora=none run's "
            "model_*.pt); base weights go in model.checkpoint_path."
        )
    if "trainable" in obj:
        return f"a training checkpoint without the '{FORMAT}' tag (not written by this sam3_lora); start a new run."
    keys = sorted(map(str, obj))
    return f"a PyTorch file with keys {keys[:6]}{' ...' if len(keys) > 6 else ''}, not a training checkpoint."


def load(path) -> Dict[str, Any]:
    """Read a training checkpoint without executing anything; any other file is refused
    with what it is and what is expected."""
    path = Path(path)
    kind = _safetensors_kind(path)
    if kind is not None:
        raise CheckpointError(f"{path} is {kind} {WHAT_RESUMES}")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        with open(path, "rb") as f:
            head = f.read(2)
        if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle's PROTO opcode
            raise _refused_pickle(path, "a bare Python pickle (not a PyTorch zip archive)")
        raise _unreadable(path, "not a zip archive" if head else "empty file")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of foreign files
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        objects = f" ({found.group(1)})" if found else ""
        what = f"a PyTorch file holding Python objects other than tensors and values{objects}"
        raise _refused_pickle(path, what) from e
    except Exception as e:  # noqa: BLE001 - a damaged archive: one clear message
        raise _unreadable(path, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is {_describe(obj)} {WHAT_RESUMES}")
    if obj.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} is a training checkpoint of format {obj.get('format_version')!r}; this sam3_lora reads format "
            f"{FORMAT_VERSION}. Resume it with the sam3_lora version that wrote it. {WHAT_RESUMES}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    run = obj.get("run")
    damaged = [
        *(["trainable"] if not _all_tensors(obj.get("trainable")) else []),
        *[k for k in ("epoch", "step") if not isinstance(obj.get(k), int)],
        *(["run"] if run is not None and not (isinstance(run, dict) and isinstance(run.get("config"), dict)) else []),
    ]
    if missing or damaged:
        raise CheckpointError(
            f"{path} is an incomplete or damaged training checkpoint (missing {missing}, malformed {damaged}); "
            f"resume from another, or start a new run. {WHAT_RESUMES}"
        )
    require_finite({k: obj[k] for k in ("trainable", "optimizer", "scaler")}, path, "training checkpoint")
    return obj


def _all_tensors(d: Any) -> bool:
    return isinstance(d, dict) and all(isinstance(v, torch.Tensor) for v in d.values())


# ---------------------------------------------------------------- same run, same settings
def _flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(d, dict) or (prefix and not d):
        return {prefix: d}
    out: Dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def setting_changes(saved: Dict[str, Any], current: Dict[str, Any]) -> List[Tuple[str, Any, Any]]:
    """(key, old, new) for each setting that differs, except those a resume may change."""
    old, new = _flatten(saved), _flatten(current)
    allowed = lambda key: any(key == p or key.startswith(p + ".") for p in RESUMABLE_CHANGES)  # noqa: E731
    missing = object()
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, missing), new.get(key, missing)
        if a is missing and b is None:  # a setting newer than the checkpoint, left off
            continue
        if a != b and not allowed(key):
            changes.append((key, "(absent)" if a is missing else a, "(absent)" if b is missing else b))
    return changes


def run_record(run_dir: Path, config: Dict[str, Any]) -> Dict[str, Any]:
    """What a checkpoint keeps of the run's settings: the resolved config (to compare a
    later launch with) and Hydra's record of this launch (to put back after a refusal)."""
    return {"config": config, "hydra_files": layout.hydra_record(run_dir)}


def check_same_settings(resume: Resume, config: Dict[str, Any], run_dir: Path, restore_record: bool = True) -> None:
    """Refuse to continue a run with settings other than its own (RESUMABLE_CHANGES aside).

    A refused launch in the checkpoint's own run directory restores Hydra's record of the
    accepted settings there (``restore_record``: one process of a DDP run does), so
    ``.hydra/config.yaml`` always describes what ran."""
    record = resume.state.get("run")
    if not record:
        return
    # A record of an earlier format is read under today's names (sam3_lora/runs/renames.py).
    changes = setting_changes(current_record(record["config"]), config)
    if not changes:
        return
    restored = []
    if restore_record and resume.path.resolve().parent.parent == Path(run_dir).resolve():
        restored = layout.restore_hydra_record(run_dir, record.get("hydra_files", {}))
    show = lambda value: json.dumps(value, default=str)  # noqa: E731
    listed = "\n".join(f"  {key}: {show(a)} -> {show(b)}" for key, a, b in changes)
    raise CheckpointError(
        f"cannot resume {resume.path} with other settings than the run that wrote it:\n{listed}\n"
        "A resumed run continues that run's adapter, optimizer and learning-rate schedule; of its settings only "
        f"{', '.join(RESUMABLE_CHANGES)} may change. To continue the run, repeat its settings (drop the overrides "
        "above); to train with the new ones, start a new run directory (another hydra.run.dir, without "
        "trainer.resume)."
        + (f" The run's own settings are back in {', '.join(str(run_dir / n) for n in restored)}." if restored else "")
    )
