"""The settings of the commands that use a trained model or its files (``evaluate``, ``predict``,
``export``, ``tradeoff``, ``describe``, ``report``): each setting's default, meaning and valid values
declared once, as for the training groups.

The Hydra commands' YAML (``conf/<command>.yaml``) name their schema first in their defaults list, so
a value of the wrong type is refused while the config is composed; ``check_use_settings`` (in
``pipeline/settings.py``) checks the ranges before anything is loaded. ``describe`` and ``report`` take
a path on the command line, parsed from their schema by ``core.schema.parse_command_line``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, List, Optional

from sam3_lora.core.device import DEVICE_NAME
from sam3_lora.core.schema import REQUIRED, Valid, at_least, is_number, number_in, one_of, setting
from sam3_lora.data.config import SPLIT_NAMES

EXPORT_FORMATS = ("merged", "peft", "transformers", "transformers-peft")
_HUB_REPO = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


def _is_prompts(value: Any) -> bool:
    texts = [value] if isinstance(value, str) else value
    return value is None or (
        isinstance(texts, list) and bool(texts) and all(isinstance(t, str) and t.strip() for t in texts)
    )


@dataclass
class TunedModelSettings:
    """Which model a command uses: a run directory's, or a base plus an adapter file
    (``pipeline/tuned.py: load_tuned``)."""

    run_dir: Optional[str] = setting(None, "a training run: its model, dataset and best weights")
    adapter: Optional[str] = setting(None, "or an adapter file (with a model= override)")
    base: bool = setting(False, "true: the frozen base (no adapter), for comparison")
    allow_base_mismatch: bool = setting(
        False, "true: load an adapter onto a base with other weights than it was trained on"
    )
    adapter_scale: float = setting(
        1.0,
        "the adapter's weight: 0 the base model, 1 as trained, between them towards the base (WiSE-FT)",
        Valid(lambda v: is_number(v) and v >= 0, "a number >= 0 (0: the base model, 1: the adapter as trained)"),
    )
    model: Any = setting(None, "the model group (used without run_dir=)")


@dataclass
class ScoringSettings:
    """How held-out splits are scored."""

    batch_size: int = setting(2, "images per batch", at_least(1))
    num_workers: int = setting(2, "data-loading processes", at_least(0))
    max_dets: int = setting(100, "detections kept per image (COCOeval's maxDets)", at_least(1))
    device: str = setting("auto", "auto (first CUDA GPU, else CPU), cpu, cuda or cuda:N", DEVICE_NAME)


@dataclass
class EvaluateSettings(ScoringSettings, TunedModelSettings):
    """``conf/evaluate.yaml``."""

    dataset: Any = setting(None, "the dataset group: replaces a run's own when given")
    merge: bool = setting(False, "true: fold the adapter into the weights (faster; figures differ by rounding)")
    concept_routing: bool = setting(
        False, "true: categories the adapter was not trained on are answered by the base (adapters off)"
    )
    split: str = setting("test", "the split scored", one_of(*SPLIT_NAMES))
    score_threshold: Optional[float] = setting(
        None,
        "the SA-Co metrics' score threshold; null: chosen on the dataset's valid split for this model",
        Valid(lambda v: v is None or (is_number(v) and 0 <= v <= 1), "a detection score in [0, 1], or null"),
    )
    output: Optional[str] = setting(None, "JSON + table go here; default: the run dir (or the adapter's folder)")


@dataclass
class PredictSettings(TunedModelSettings):
    """``conf/predict.yaml``."""

    merge: bool = setting(True, "fold the adapter into the weights for speed (outputs equal up to rounding)")
    concept_routing: bool = setting(
        False, "true: prompts the adapter was not trained on are answered by the base (adapters off; unmerged)"
    )
    images: str = setting(REQUIRED, "an image, a folder, or a glob")
    prompts: Any = setting(
        None,
        "text prompts, e.g. [person, 'hard hat']; null: the run's training categories",
        Valid(
            _is_prompts,
            "a text prompt or a non-empty list of them, each non-empty text, e.g. prompts=[person,'hard hat'], or null "
            "(the run's training categories)",
        ),
    )
    score_threshold: float = setting(0.5, "detections scoring below this are dropped", number_in(0, 1, "in [0, 1]"))
    max_dets: int = setting(20, "detections kept per image, over all prompts", at_least(1))
    batch_size: int = setting(2, "images per batch", at_least(1))
    device: str = setting("auto", "auto (first CUDA GPU, else CPU), cpu, cuda or cuda:N", DEVICE_NAME)
    output: str = setting(REQUIRED, "the folder the overlays and predictions.coco.json go to")
    overwrite: bool = setting(False, "true: write into a folder that already holds files")
    stop_on_error: bool = setting(
        False, "true: stop at the first image that does not decode (default: skip it, listed in info.skipped)"
    )


@dataclass
class PeftExportSettings:
    allow_partial: bool = setting(
        False, "write the Linear updates even when attention updates cannot be expressed in PEFT's format"
    )


@dataclass
class ExportSettings(TunedModelSettings):
    """``conf/export.yaml``."""

    format: str = setting(
        "merged",
        "merged: full weights in sam3.pt layout (a .pt file) | peft: PEFT adapter on sam3's modules | transformers: "
        "config.json + model.safetensors for transformers' Sam3Model | transformers-peft: PEFT adapter on Sam3Model",
        one_of(*EXPORT_FORMATS),
    )
    output: str = setting(REQUIRED, "merged: a .pt file; the other formats: a folder")
    overwrite: bool = setting(False, "true: replace an existing output")
    push_to_hub: Optional[str] = setting(
        None,
        "a Hub repository id (user/name): upload the export and its model card when online",
        Valid(lambda v: v is None or bool(_HUB_REPO.match(v)), "a Hub repository id such as user/name, or null"),
    )
    peft: PeftExportSettings = setting(doc="format=peft's options", factory=PeftExportSettings)


@dataclass
class TradeoffSettings(ScoringSettings):
    """``conf/tradeoff.yaml``."""

    run_dir: str = setting(REQUIRED, "a LoRA training run")
    retention: Any = setting(None, "the retention group: the run's own when not given")
    scales: List[float] = setting(
        doc="adapter scales scored (0: the base, 1: as trained)",
        valid=Valid(lambda v: bool(v) and all(is_number(s) and s >= 0 for s in v), "a non-empty list of numbers >= 0"),
        factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0],
    )
    budget: float = setting(
        0.05,
        "the largest drop of retention segm AP (its valid split, against scale 0) allowed",
        number_in(0, 1, "a drop of AP in [0, 1]"),
    )
    output: Optional[str] = setting(None, "tradeoff.json / .csv / .md / .png go here; default: the run directory")


@dataclass
class DescribeSettings:
    """``python -m sam3_lora.describe ADAPTER``."""

    adapter: str = setting(REQUIRED, "an adapter .safetensors file written by sam3_lora")


@dataclass
class ReportSettings:
    """``python -m sam3_lora.report SWEEP_DIR``."""

    sweep_dir: str = setting(REQUIRED, "a multirun directory (its runs' results.json are read)")


# The config store's nodes, by the names the commands' YAML defaults lists use.
USE_SCHEMAS = {
    "evaluate_schema": EvaluateSettings,
    "predict_schema": PredictSettings,
    "export_schema": ExportSettings,
    "tradeoff_schema": TradeoffSettings,
}
# The config-group sections a use command may hold, each checked against its option's schema.
USE_SECTIONS = ("model", "dataset", "retention")
