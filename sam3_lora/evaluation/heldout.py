"""A model scored on a split, and the held-out rule that training and ``evaluate`` share.

:func:`score_split`: COCO AP (``coco_ap``) and the SA-Co metrics (``saco``) from one prediction pass.
:class:`Evaluator`: training's validation, the threshold chosen on the split it scores.
:class:`HeldoutScorer`: one dataset's held-out split scored at the SA-Co score threshold chosen on
that dataset's ``valid`` split for the model being scored (one extra prediction pass on valid), or
at a threshold given (by the user, or recorded at the best validation); on the scored split itself,
with a note saying so, when that split is valid or there is no valid split. The rule and its notes
exist here only.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

import torch
from torch import nn

from sam3_lora.data.prepare import PreparedDataset
from sam3_lora.evaluation.coco_ap import coco_evaluate
from sam3_lora.evaluation.detections import predict
from sam3_lora.evaluation.ground_truth import load_dataset
from sam3_lora.evaluation.saco import SacoEvaluation, saco_evaluate


@dataclass
class SplitScore:
    """One model on one split: the flat ``metrics`` (COCO's ``bbox/AP``, ... and SA-Co's
    ``saco/threshold``, ``saco/IL_MCC``, ``segm/cgF1``, ...), per-category figures, and what the
    figures leave out."""

    metrics: Dict[str, float]
    per_category: Dict[str, Dict[str, float]]
    per_category_saco: Dict[str, Dict[str, Dict[str, float]]]
    notes: List[str]
    num_detections: int


def score_split(
    model: nn.Module,
    loader,
    ann_file: str,
    device: torch.device,
    max_dets: int = 100,
    autocast: Optional[contextlib.AbstractContextManager] = None,
    score_threshold: Optional[float] = None,
    base_for: Optional[Set[int]] = None,
) -> SplitScore:
    """``score_threshold`` None: the SA-Co threshold is chosen on this same split. ``base_for``: the
    category ids answered with the adapters off (concept routing)."""
    detections = predict(model, loader, device, max_dets, autocast, base_for=base_for)
    metrics, per_category, notes = coco_evaluate(ann_file, detections)
    sa_co = saco_evaluate(ann_file, detections, score_threshold)
    metrics.update(sa_co.metrics)
    return SplitScore(metrics, per_category, sa_co.per_category, notes + sa_co.notes, len(detections))


@dataclass
class Evaluator:
    """Training's validation: the flat metrics of the model on one split, its SA-Co threshold chosen
    on that split (it is the valid split)."""

    ann_file: str
    loader: torch.utils.data.DataLoader
    max_dets: int = 100

    def __call__(self, model: nn.Module, device: torch.device, autocast=None) -> Dict[str, float]:
        return score_split(model, self.loader, self.ann_file, device, self.max_dets, autocast).metrics


@dataclass
class HeldoutScore:
    """A model's score on a dataset's held-out split. ``threshold_chosen_on``: the split the SA-Co
    score threshold was chosen on (None: given); ``notes``: the data's, the threshold's, the figures'."""

    dataset: str
    split: str
    score: SplitScore
    threshold_chosen_on: Optional[str]
    notes: List[str] = field(default_factory=list)
    valid: Optional[Dict[str, float]] = None  # COCO AP on the valid split, where the threshold was chosen there

    @property
    def metrics(self) -> Dict[str, float]:
        return self.score.metrics


@dataclass
class HeldoutScorer:
    """Scores models on ``data``'s split ``split`` (see the module docstring for the threshold rule).
    ``tuned_concepts``: with concept routing, the category names the adapter was trained on; every
    other category is answered by the base model inside (adapters off)."""

    data: PreparedDataset
    split: str
    image_size: int
    batch_size: int
    num_workers: int
    max_dets: int = 100
    tuned_concepts: Optional[Set[str]] = None

    def _loader(self, name: str):
        return self.data.eval_loader(name, self.image_size, self.batch_size, self.num_workers)

    def base_for(self, name: str) -> Optional[Set[int]]:
        """Split ``name``'s category ids routed to the base (None without routing)."""
        if self.tuned_concepts is None:
            return None
        categories = load_dataset(self.data.require(name).ann_file)["categories"]
        return {c["id"] for c in categories if c["name"] not in self.tuned_concepts}

    def evaluator(self, name: str = "valid") -> Evaluator:
        return Evaluator(self.data.require(name).ann_file, self._loader(name), self.max_dets)

    def threshold(
        self, model: nn.Module, device, autocast=None, given: Optional[float] = None, given_as: str = "as given"
    ) -> Tuple[Optional[float], Optional[str], List[str], Optional[Dict[str, float]]]:
        """``(threshold, chosen_on, notes, valid)``: ``given`` as it is (chosen_on None); None where the
        scored split itself chooses it; else chosen on valid for ``model``, whose COCO AP there is ``valid``
        (from the same detections: what a choice between models may look at)."""
        split = self.split
        if given is not None:
            return given, None, [f"SA-Co: score threshold {given:.2f} {given_as}, used on '{split}'"], None
        if split == "valid":
            return None, "valid", ["SA-Co: split 'valid': the score threshold is chosen on the split it scores"], None
        valid = self.data.split("valid")
        if valid is None:
            return (
                None,
                split,
                [
                    f"SA-Co: no valid split: the score threshold was chosen on the '{split}' split itself, so "
                    "IL_MCC / pmF1 / cgF1 are optimistic (give a score threshold to fix one)"
                ],
                None,
            )
        detections = predict(
            model, self._loader("valid"), device, self.max_dets, autocast, base_for=self.base_for("valid")
        )
        chosen = SacoEvaluation(valid.ann_file, detections).choose_threshold()
        images = self.data.num_images("valid")
        on = f"'valid' ({images} images)" if images is not None else "'valid'"
        notes = [f"SA-Co: score threshold chosen on {on} for this model, used on '{split}'"]
        on_valid = coco_evaluate(valid.ann_file, detections)[0]
        return chosen, "valid", notes + self.data.notes("valid", use="the score threshold chosen"), on_valid

    def score(
        self, model: nn.Module, device, autocast=None, given: Optional[float] = None, given_as: str = "as given"
    ) -> HeldoutScore:
        """``model`` on the held-out split at its threshold (see :meth:`threshold`)."""
        threshold, chosen_on, threshold_notes, valid = self.threshold(model, device, autocast, given, given_as)
        split = self.data.require(self.split)
        loader, base_for = self._loader(self.split), self.base_for(self.split)
        score = score_split(model, loader, split.ann_file, device, self.max_dets, autocast, threshold, base_for)
        notes = self.data.notes(self.split) + score.notes + threshold_notes
        return HeldoutScore(self.data.name, self.split, score, chosen_on, notes, valid)
