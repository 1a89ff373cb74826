"""The files a training run leaves in its run directory, named once.

``outputs/<date>/<time>/`` (or ``hydra.run.dir``) holds Hydra's record of the settings, the log,
the metrics, the shippable weights and the checkpoints that resume the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from sam3_lora.core.atomic_files import atomic_write_text

HYDRA_CONFIG = ".hydra/config.yaml"  # the composed settings, as Hydra saved them at launch
HYDRA_OVERRIDES = ".hydra/overrides.yaml"
# Hydra rewrites these on every launch; a refused launch puts the accepted run's back.
HYDRA_RECORD = (HYDRA_CONFIG, HYDRA_OVERRIDES, ".hydra/hydra.yaml")
LOCK = "training.lock"  # the training that owns the directory (sam3_lora/runs/lock.py)
TRAINING_LOG = "training.log"
RESULTS = "results.json"  # the final summary: held-out scores, throughput, memory
METRICS = "metrics.json"  # validation scores per evaluation
MODEL_CARD = "README.md"  # the Hugging Face model card (sam3_lora/hf/model_card.py)
CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
TRUNK_CACHE_DIR = "trunk_cache"  # trunk features beyond the memory budget, during the run (removed at its end)


def adapter_file(tag: str) -> str:
    """``adapter_best.safetensors`` / ``adapter_last.safetensors``: a LoRA run's shippable weights."""
    return f"adapter_{tag}.safetensors"


def full_weights_file(tag: str) -> str:
    """``model_best.pt`` / ``model_last.pt``: a ``lora=none`` run's weights, in sam3.pt's layout."""
    return f"model_{tag}.pt"


def heldout_scores(role: str) -> str:
    """``heldout_target.json`` / ``heldout_retention.json``: a dataset's held-out scores, the frozen
    base's (from before training: a resumed run reuses them) and the tuned model's."""
    return f"heldout_{role}.json"


def hydra_config(run_dir) -> Path:
    return Path(run_dir) / HYDRA_CONFIG


def hydra_record(run_dir) -> Dict[str, str]:
    """Hydra's record of this launch (the HYDRA_RECORD files that exist), to put back after a refusal."""
    return {name: (Path(run_dir) / name).read_text() for name in HYDRA_RECORD if (Path(run_dir) / name).is_file()}


def restore_hydra_record(run_dir, files: Dict[str, str]) -> List[str]:
    """Write a saved record back (a refused launch overwrote it); the names written."""
    for name, text in files.items():
        atomic_write_text(Path(run_dir) / name, text)
    return list(files)
