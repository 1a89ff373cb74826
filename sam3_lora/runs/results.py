"""``results.json``: what a finished training run records about itself, written by ``train`` and read
back by the sweep report and the model cards (one schema, here).

``results`` holds the held-out scores: ``base`` (the frozen base, before training) and the tuned
model under its tuning's label (``lora``, or ``finetuned`` for full fine-tuning); ``retention``, when
the run had a retention dataset, its scores before and after and their change.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from sam3_lora.runs import layout

# The tuned model's key in ``results``, by tuning method (sam3_lora/tuning/ takes them from here).
LORA_LABEL = "lora"
FULL_FINE_TUNING_LABEL = "finetuned"
TUNED_LABELS = (LORA_LABEL, FULL_FINE_TUNING_LABEL)  # the package's own; a method of yours adds its label


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
            coco = json.loads(Path(ann_file).read_text())
            facts.splits[split] = {
                "images": len(coco.get("images", [])),
                "annotations": len(coco.get("annotations", [])),
            }
            for category in coco.get("categories", []):
                if category.get("name") not in facts.categories:
                    facts.categories.append(category.get("name"))
        return facts

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> Optional["DatasetFacts"]:
        return cls(**d) if d else None

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
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def read(cls, path) -> "RunResults":
        """A ``results.json`` (or the run directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / layout.RESULTS
        d = json.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known and v is not None}
        values["dataset"] = DatasetFacts.from_dict(d.get("dataset"))
        return cls(**{"results": {}, **values})
