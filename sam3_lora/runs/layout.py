"""The files a training run leaves in its run directory, named once.

``outputs/<date>/<time>/`` (or ``hydra.run.dir``) holds Hydra's record of the settings, the log,
the metrics, the shippable weights and the checkpoints that resume the run.
"""

from __future__ import annotations

from pathlib import Path

HYDRA_CONFIG = ".hydra/config.yaml"  # the composed settings, as Hydra saved them at launch
HYDRA_OVERRIDES = ".hydra/overrides.yaml"
TRAINING_LOG = "training.log"
RESULTS = "results.json"  # the final summary: held-out scores, throughput, memory
METRICS = "metrics.json"  # validation scores per evaluation
MODEL_CARD = "README.md"  # the Hugging Face model card (sam3_lora/hf/model_card.py)
CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"


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
