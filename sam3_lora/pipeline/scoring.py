"""A run's held-out scores: its target dataset and its retention dataset (if any), each scored with the
frozen base before tuning and with the best tuned model after, by one rule (``evaluation/heldout.py``).

Each dataset's scores are kept in ``heldout_<role>.json`` in the run directory: the base's are
written before training, so a resumed run reuses them rather than scoring a model that has trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import nn

from sam3_lora.core.atomic_files import atomic_write_json
from sam3_lora.core.documents import Fields, Kind, ListOf, Nullable, read_json
from sam3_lora.core.errors import UserError
from sam3_lora.data.prepare import PreparedDataset
from sam3_lora.evaluation.heldout import HeldoutScore, HeldoutScorer
from sam3_lora.runs import layout
from sam3_lora.runs.results import METRICS, metric_change

TARGET, RETENTION = "target", "retention"
# How the tuned model's threshold on the target's held-out split came about (training's validations).
RECORDED = "recorded at its best validation evaluation (chosen on 'valid')"
# heldout_<role>.json, as ScoredDataset.write leaves it.
_NOTES = Nullable(ListOf(Kind(str)))
SCORES_SHAPE = Fields(
    {
        "dataset": Kind(str),
        "split": Kind(str),
        **{k: Nullable(METRICS) for k in ("base", "tuned", "base_valid", "tuned_valid")},
        "base_notes": _NOTES,
        "tuned_notes": _NOTES,
    },
    required=("dataset", "split"),
)
SCORES_FIX = (
    "It keeps the frozen base's held-out scores of an earlier session of this run (a resumed run reuses them); "
    "delete it and the base is scored again"
)


class ScoresFileError(UserError, ValueError):
    """A heldout_<role>.json that is unreadable or not what a run writes there."""


@dataclass
class Scores:
    """One dataset's held-out scores: the frozen base's and the tuned model's (flat metrics), with notes."""

    dataset: str
    split: str
    base: Optional[Dict[str, float]] = None
    tuned: Optional[Dict[str, float]] = None
    base_notes: Optional[List[str]] = None
    tuned_notes: Optional[List[str]] = None
    base_valid: Optional[Dict[str, float]] = None  # COCO AP on the valid split (where the threshold was chosen)
    tuned_valid: Optional[Dict[str, float]] = None

    def change(self) -> Dict[str, float]:
        """tuned - base (negative = lost), as :func:`metric_change` defines it."""
        if not self.base or not self.tuned:
            return {}
        return metric_change(self.base, self.tuned)


@dataclass
class ScoredDataset:
    """A dataset a run scores, as ``role`` (target or retention), and where its scores are kept."""

    role: str
    scorer: HeldoutScorer
    path: Path
    scores_base: bool  # the target's base only with final_eval.compare_base; the retention's always

    def read(self) -> Scores:
        if not self.path.is_file():
            return Scores(self.scorer.data.name, self.scorer.split)
        values = read_json(self.path, f"{self.role} held-out scores file", SCORES_FIX, SCORES_SHAPE, ScoresFileError)
        scored = (self.scorer.data.name, self.scorer.split)
        if (values["dataset"], values["split"]) != scored:  # another dataset's base scores are not this one's
            raise ScoresFileError(
                f"{self.path}: holds the scores of dataset '{values['dataset']}' split '{values['split']}', this run "
                f"scores '{scored[0]}' split '{scored[1]}'. {SCORES_FIX}"
            )
        return Scores(**{k: v for k, v in values.items() if k in SCORES_SHAPE.fields})

    def write(self, scores: Scores) -> None:
        atomic_write_json(self.path, vars(scores))


def scored_datasets(
    run_dir: Path,
    target: PreparedDataset,
    retention: Optional[PreparedDataset],
    preferred_split: str,
    compare_base: bool,
    loader_settings: Dict,
) -> List[ScoredDataset]:
    """The target (when it has a held-out split) and the retention dataset, each with its scorer.
    ``loader_settings``: ``image_size``, ``batch_size``, ``num_workers``, ``max_dets``."""
    entries = []
    if preferred_split in target.splits or "valid" in target.splits:
        scorer = HeldoutScorer(target, target.heldout(preferred_split), **loader_settings)
        entries.append(ScoredDataset(TARGET, scorer, run_dir / layout.heldout_scores(TARGET), compare_base))
    if retention is not None:
        scorer = HeldoutScorer(retention, retention.heldout(), **loader_settings)
        entries.append(ScoredDataset(RETENTION, scorer, run_dir / layout.heldout_scores(RETENTION), True))
    return entries


def score_base(entries: List[ScoredDataset], model: nn.Module, device: torch.device) -> Dict[str, Scores]:
    """The frozen base on each held-out split, unless a resumed run's files hold its scores already.

    Scoring draws from torch's random stream (the loaders' seeds): forked, so LoRA's initialisation and
    the training order are the same whether or not the base is scored."""
    found = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for entry in entries:
            scores = entry.read()
            if entry.scores_base and scores.base is None:
                scored = entry.scorer.score(model.to(device), device)
                scores.base, scores.base_notes, scores.base_valid = scored.metrics, scored.notes, scored.valid
                entry.write(scores)
            found[entry.role] = scores
    return found


def score_tuned(
    entries: List[ScoredDataset], model: nn.Module, device, autocast, recorded_threshold: Optional[float]
) -> Dict[str, Scores]:
    """The tuned model on each held-out split: the target's at the threshold recorded at its best
    validation (when there is one), the retention's at the threshold chosen on its own valid split."""
    found = {}
    for entry in entries:
        given = recorded_threshold if entry.role == TARGET else None
        scored: HeldoutScore = entry.scorer.score(model, device, autocast, given=given, given_as=RECORDED)
        scores = entry.read()
        scores.tuned, scores.tuned_notes, scores.tuned_valid = scored.metrics, scored.notes, scored.valid
        entry.write(scores)
        found[entry.role] = scores
    return found
