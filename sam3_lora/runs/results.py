"""``results.json``: what a finished training run records about itself, written by ``train`` and read
back by the sweep report and the model cards (one schema, here).

``results`` holds the held-out scores: ``base`` (the frozen base, before training) and the tuned
model under its tuning's label (``lora``, or ``finetuned`` for full fine-tuning); ``retention``, when
the run had a retention dataset, its scores before and after and their change.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from sam3_lora.core.atomic_files import atomic_write_json
from sam3_lora.core.documents import (
    Anything,
    Either,
    Fields,
    FiniteNumber,
    Kind,
    ListOf,
    MapOf,
    Nullable,
    read_json,
    require_shape,
)
from sam3_lora.core.errors import UserError
from sam3_lora.runs import layout

# The tuned model's key in ``results``, by tuning method (sam3_lora/tuning/ takes them from here).
LORA_LABEL = "lora"
FULL_FINE_TUNING_LABEL = "finetuned"
TUNED_LABELS = (LORA_LABEL, FULL_FINE_TUNING_LABEL)  # the package's own; a method of yours adds its label

# What a results.json must hold where it is read; a missing optional figure is null or absent.
METRICS = MapOf(FiniteNumber())  # flat held-out metrics: {"segm/AP": 0.41, ...}; COCO's -1 for undefined
_NUMBER, _COUNT, _TEXT = Nullable(FiniteNumber()), Nullable(Kind(int)), Nullable(Kind(str))
_DATASET = Fields(
    {
        "name": Kind(str),
        "root": Kind(str),
        "splits": MapOf(
            Fields({"images": Kind(int), "annotations": Kind(int), "sha256": Kind(str)}, required=("images", "annotations"))
        ),
        "categories": ListOf(Kind(str)),
    },
    required=("name", "root"),
)
_RETENTION = Fields(
    {
        "dataset": Kind(str),
        "split": Kind(str),
        "base": Nullable(METRICS),
        "tuned": Nullable(METRICS),
        "change": Nullable(METRICS),
        "valid": Nullable(Fields({"base": METRICS, "tuned": METRICS}, required=("base", "tuned"))),
    },
    required=("dataset", "split"),
)
# preserve=distill's record, as the model card shows it; another keeping method's record is its own.
_DISTILL_RECORD = Fields(
    {
        "vocabulary": Either(Kind(str), ListOf(Kind(str))),
        "anchor_batch": Kind(int),
        "images": Kind(str),
        "weight": FiniteNumber(),
    },
    required=("vocabulary", "anchor_batch", "images", "weight"),
)
_SCALE_POINT = Fields(
    {"scale": FiniteNumber(), "target": METRICS, "retention": METRICS}, required=("scale", "target", "retention")
)
RESULTS_SHAPE = Fields(
    {
        "results": MapOf(Nullable(METRICS)),
        "heldout_split": _TEXT,
        "tuning": Nullable(Fields({"label": _TEXT, "config": Nullable(MapOf(Anything()))})),
        "wall_time_s": _NUMBER,
        "trainable_parameters": _COUNT,
        "best_val": _NUMBER,
        "images_per_s": _NUMBER,
        "peak_memory_gb": _NUMBER,
        "world_size": Nullable(Kind(int)),
        "device": _TEXT,
        "overrides": _TEXT,
        "seed": _COUNT,
        "step_time_s": _NUMBER,
        "dataset": Nullable(_DATASET),
        "notes": Nullable(ListOf(Kind(str))),
        "retention": Nullable(_RETENTION),
        "trunk_cache": Nullable(MapOf(Nullable(FiniteNumber()))),
        "preserve": Nullable(MapOf(Anything())),
        "adapter_scales": Nullable(ListOf(_SCALE_POINT)),
    },
    required=("results",),
)
RESULTS_FIX = (
    "results.json is written when a training run finishes: a half-written or hand-edited one is not its run's "
    "record. Re-run the training (it resumes from its checkpoints), or delete the file to leave the run out"
)


class ResultsFileError(UserError, ValueError):
    """A results.json that is unreadable, or holds something other than what a finished run writes."""


def metric_change(base: Mapping[str, float], tuned: Mapping[str, float]) -> Dict[str, float]:
    """``tuned - base`` per metric both hold (negative = lost). COCOeval writes -1 for an AP/AR it could
    not score (no object of that size): those have no change. SA-Co's IL_MCC and cgF1 lie in [-1, 1],
    so a negative one is a score, and it is kept."""

    def scored(key: str, value: float) -> bool:
        return value >= 0 or not key.rsplit("/", 1)[-1].startswith(("AP", "AR"))

    return {k: v - base[k] for k, v in tuned.items() if k in base and scored(k, v) and scored(k, base[k])}


@dataclass
class DatasetFacts:
    """A training set as results and cards show it: name, where it was, images and annotations per
    split, categories."""

    name: str
    root: str
    splits: Dict[str, Dict[str, int]] = field(default_factory=dict)
    categories: List[str] = field(default_factory=list)

    @classmethod
    def from_annotations(cls, name: str, root: str, ann_files: Mapping[str, str]) -> "DatasetFacts":
        facts = cls(name=str(name), root=str(root))
        for split, ann_file in ann_files.items():
            content = Path(ann_file).read_bytes()
            coco = json.loads(content)
            facts.splits[split] = {
                "images": len(coco.get("images", [])),
                "annotations": len(coco.get("annotations", [])),
                "sha256": hashlib.sha256(content).hexdigest(),  # which file, exactly (a few-shot draw, say)
            }
            for category in coco.get("categories", []):
                if category.get("name") not in facts.categories:
                    facts.categories.append(category.get("name"))
        return facts

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> Optional["DatasetFacts"]:
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in fields(cls)}}) if d else None

    @property
    def label(self) -> str:
        """The name a card gives it: ``dataset=coco`` is the option for any COCO folder, so its folder names it."""
        return (Path(self.root).name or self.name) if self.name == "coco" else self.name


@dataclass
class RunResults:
    """The schema of ``results.json``."""

    results: Dict[str, Dict[str, float]]
    heldout_split: Optional[str] = None
    tuning: Dict[str, Any] = field(default_factory=dict)  # {"label": "lora" | "finetuned", "config": LoRA's or None}
    wall_time_s: Optional[float] = None
    trainable_parameters: Optional[int] = None
    best_val: Optional[float] = None
    images_per_s: Optional[float] = None
    peak_memory_gb: Optional[float] = None
    world_size: int = 1
    device: Optional[str] = None  # the torch device type it trained on (cuda, cpu)
    overrides: str = ""
    seed: Optional[int] = None
    step_time_s: Optional[float] = None
    dataset: Optional[DatasetFacts] = None
    notes: List[str] = field(default_factory=list)
    retention: Optional[Dict[str, Any]] = None  # {"dataset", "split", "base", "tuned", "change"}
    trunk_cache: Optional[Dict[str, int]] = None  # the trunk feature cache's hits and misses, when it ran
    preserve: Optional[Dict[str, Any]] = None  # preserve=distill's settings, when the run distilled
    # final_eval.adapter_scales: per scale {"scale", "target": held-out metrics, "retention": held-out metrics}
    adapter_scales: Optional[List[Dict[str, Any]]] = None

    @property
    def tuned_label(self) -> Optional[str]:
        return self.tuning.get("label") or next((k for k in TUNED_LABELS if k in self.results), None)

    @property
    def full_fine_tuning(self) -> bool:
        """Every weight trained (the sweep report's reference for what LoRA keeps and gains)."""
        return self.tuned_label == FULL_FINE_TUNING_LABEL

    @property
    def base(self) -> Dict[str, float]:
        return self.results.get("base") or {}

    @property
    def tuned(self) -> Dict[str, float]:
        return self.results.get(self.tuned_label or "", {}) or {}

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        if self.retention is None:
            d.pop("retention")
        return d

    def write(self, run_dir) -> Path:
        path = Path(run_dir) / layout.RESULTS
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def read(cls, path) -> "RunResults":
        """A ``results.json`` (or the run directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / layout.RESULTS
        d = read_json(path, "results.json", RESULTS_FIX, RESULTS_SHAPE, ResultsFileError)
        if "vocabulary" in (d.get("preserve") or {}):
            require_shape(d, Fields({"preserve": _DISTILL_RECORD}), path, "results.json", RESULTS_FIX, ResultsFileError)
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known and v is not None}
        values["dataset"] = DatasetFacts.from_dict(d.get("dataset"))
        return cls(**{"results": {}, **values})
