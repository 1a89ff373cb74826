"""SA-Co metrics (SAM3 paper): IL_MCC, pmF1 and cgF1, and IL_FPR, from sam3's reference ``CGF1Eval``.

Each (image, concept prompt) pair is a datapoint; our evaluation asks every category of every
image, so every (image, category) pair of the split is one. At a score threshold ``t``:

- **IL_MCC** (image level): a pair is predicted positive when any detection scores ``>= t``,
  ground-truth positive when it has an instance; IL_MCC is the Matthews correlation of the two
  over all pairs (pairs without instances or detections are the true negatives).
- **pmF1** (positive micro F1): on the pairs with an instance, the detections scoring ``>= t``
  are matched one-to-one to the instances (Hungarian on IoU); TP, FP and FN are summed over those
  pairs (micro), F1 taken per IoU threshold 0.50:0.05:0.95 and averaged.
- **cgF1** = pmF1 x IL_MCC.
- **IL_FPR** (image level false-positive rate): of the pairs without an instance (the concept is
  absent from the image), the share answered with a detection scoring ``>= t``. Per concept it is
  the figure for "does the model fire on this prompt where the concept is not": a tuned model that
  answers every prompt with a detection has IL_FPR 1. Lower is better.

All three are on the 0..1 scale of COCO AP here; the paper prints them x100.

sam3's ``CGF1Eval`` (``sam3/eval/cgf1_eval.py``, a COCOeval subclass whose "image_id" is an
(image, noun phrase) pair) computes them: each (image, category) pair becomes one pseudo-image,
and the split's annotations and our detections are re-keyed to it. IoUs are computed once;
each score threshold re-runs only the per-pair matching (cheap). Per category, the pairs of
that category are accumulated alone.

The score threshold is either given or chosen (:meth:`SacoEvaluation.choose_threshold`): the
value of :data:`THRESHOLDS` (0.05 to 0.95, step 0.05) with the highest segm cgF1 (bbox cgF1 when
the split has no masks at all), the lower one on ties. Training and ``evaluate`` choose it on the
``valid`` split and report it as ``saco/threshold``.

Undefined cases, as reported:

- pmF1 and cgF1 are -1 (printed '-', like COCO's -1) where there is no pair with an instance
  (a category absent from the split, or a split without annotations): nothing to find.
- IL_FPR is -1 where there is no pair without an instance (a concept in every image).
- IL_MCC with an empty marginal (no ground-truth positive, no predicted positive, or no
  negative of either kind) is 0: sam3's formula adds 1e-6 to a zero denominator over a zero
  numerator, as sklearn's ``matthews_corrcoef`` returns 0 there.
- sam3 adds small epsilons (1e-4 to F1 denominators, 1e-6 to MCC's): a perfect prediction
  scores a hair under 1 (about 0.99996 pmF1).

Crowds and annotations without a mask: ``CGF1Eval`` marks a ground truth ``ignore`` from its
``iscrowd`` flag only (pycocotools' ``_prepare`` overwrites any ``ignore`` key with ``iscrowd``).
An ignored instance is not one to find (no FN), but a detection on it is not excused: unlike
COCOeval, where a detection matched to a crowd neither counts nor costs, it stays unmatched, a
false positive of its pair (counted in pmF1 when the pair also has instances to find; a pair with
only ignored instances is a ground-truth negative, so its detections make it an image-level FP).
Annotations without a mask are treated as COCO segm AP treats them (``coco.py``): for segm their
box is an ignore region (``iscrowd=1``). Their concept is present all the same, so the image level
is taken from the bbox evaluation, where they count fully: ``saco/IL_MCC`` is one figure for both
IoU types, and segm cgF1 = segm pmF1 x that IL_MCC (with every annotation masked this is exactly
CGF1Eval's own segm cgF1).
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from sam3_lora.evaluation.ground_truth import coco_api, has_mask, load_dataset, segm_ground_truth

IOU_TYPES = ("bbox", "segm")
# The score thresholds a threshold is chosen from: 0.05, 0.10, ..., 0.95.
THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))
# The flat metric keys, next to COCO AP's "bbox/AP", ...
THRESHOLD_KEY = "saco/threshold"
IL_MCC_KEY = "saco/IL_MCC"
IL_FPR_KEY = "saco/IL_FPR"
SCORE_KEYS = (IL_MCC_KEY, "bbox/pmF1", "bbox/cgF1", "segm/pmF1", "segm/cgF1")  # higher is better
METRIC_KEYS = (THRESHOLD_KEY, *SCORE_KEYS, IL_FPR_KEY)
PER_CATEGORY_STATS = ("IL_MCC", "IL_FPR", "pmF1", "cgF1")
UNDEFINED = -1.0


@dataclass
class SacoResult:
    """SA-Co metrics at one score threshold.

    ``metrics``: the :data:`METRIC_KEYS`; ``per_category``: ``{iou type: {category name:
    {"IL_MCC", "pmF1", "cgF1"}}}``; ``notes``: what the figures leave out."""

    metrics: Dict[str, float]
    per_category: Dict[str, Dict[str, Dict[str, float]]] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    @property
    def threshold(self) -> float:
        return self.metrics[THRESHOLD_KEY]


class SacoEvaluation:
    """One split's ground truth and one set of detections, ready to be scored at any threshold.

    ``dataset``: a COCO dataset dict or an annotation file; ``detections``: COCO results as
    :func:`sam3_lora.evaluation.detections.predict` gives them (image_id, category_id, score, bbox
    xywh, segmentation RLE). Building it computes every IoU once (both IoU types).

    ``min_score``: the lowest threshold it will be scored at; detections below it never count,
    so they are dropped up front (sam3 keeps up to ``max_dets`` detections per pair however low
    they score: most of them)."""

    def __init__(self, dataset: Union[str, dict], detections: Sequence[dict], min_score: float = THRESHOLDS[0]):
        from sam3.eval.cgf1_eval import CGF1Eval

        dataset = load_dataset(dataset)
        self.category_names = {c["id"]: c["name"] for c in dataset["categories"]}
        images, pair_of, self.pairs_by_category = _pairs(dataset)
        annotations = _rekeyed(dataset["annotations"], pair_of, "annotation")
        self.num_annotations = len(annotations)
        self.unmasked = sum(not has_mask(a) for a in annotations)
        segm_annotations = segm_ground_truth({"annotations": annotations})[0]["annotations"]
        self.min_score = min_score
        results = [d for d in _rekeyed(detections, pair_of, "detection", renumber=True) if d["score"] >= min_score]
        self._evals = {}
        self._scored_at: Dict[str, float] = {}
        for iou_type, gts in (("bbox", annotations), ("segm", segm_annotations)):
            # pycocotools edits annotations in place (masks to RLE, ignore flags): copies for each.
            gt = coco_api({"images": images, "categories": dataset["categories"], "annotations": _copies(gts)})
            dt = coco_api({"images": images, "categories": dataset["categories"], "annotations": _copies(results)})
            ev = CGF1Eval(coco_gt=gt, coco_dt=dt, iouType=iou_type)
            with contextlib.redirect_stdout(io.StringIO()):
                ev.evaluate()  # the IoUs, once; then the matching at ev.threshold
            self._evals[iou_type] = ev
            self._scored_at[iou_type] = ev.threshold

    @property
    def has_masks(self) -> bool:
        """Whether any annotation of the split has a mask (else the threshold is chosen on bbox cgF1)."""
        return self.unmasked < self.num_annotations

    def notes(self) -> List[str]:
        if not self.unmasked:
            return []
        return [
            f"SA-Co segm: {self.unmasked} of {self.num_annotations} annotations have no mask; their boxes are "
            "ignore regions for segm pmF1 (not instances to find; a detection there counts as a false positive "
            "when its pair has masked instances, as sam3's CGF1Eval does), while IL_MCC counts them as present"
        ]

    def _matched_at(self, iou_type: str, threshold: float):
        """The evaluator with every pair matched at ``threshold`` (the IoUs are reused)."""
        if threshold < self.min_score:
            raise ValueError(f"score threshold {threshold} is below min_score {self.min_score}: build with a lower one")
        ev = self._evals[iou_type]
        if self._scored_at[iou_type] != threshold:
            ev.threshold = threshold
            p = ev.params
            ev.evalImgs = [ev.evaluateImg(pair, -1, p.areaRng[0], p.maxDets[-1]) for pair in p.imgIds]
            self._scored_at[iou_type] = threshold
        return ev

    def counts(self, iou_type: str, threshold: float, category_id: Optional[int] = None) -> dict:
        """CGF1Eval's accumulated figures at ``threshold`` (its ``eval`` dict: TPs, FPs, FNs, recall,
        positive_micro_F1, IL_MCC, cgF1, ..., per IoU threshold 0.50:0.95 where not image level),
        over every pair or over one category's, plus ``positive_pairs``: the pairs with an instance
        to find."""
        ev = self._matched_at(iou_type, threshold)
        p = copy.copy(ev.params)
        if category_id is not None:
            p.imgIds = self.pairs_by_category[category_id]
        wanted = set(p.imgIds)
        # positive_macro_F1 divides by zero when no pair has both instances and detections (unused here)
        with np.errstate(divide="ignore", invalid="ignore"), contextlib.redirect_stdout(io.StringIO()):
            ev.accumulate(p)
        positive = sum(1 for r in ev.evalImgs if r["image_id"] in wanted and (r["IL_TP"] or r["IL_FN"]))
        return {**ev.eval, "positive_pairs": positive, "negative_pairs": len(wanted) - positive}

    def _scores(self, threshold: float, category_id: Optional[int] = None) -> Dict[str, float]:
        image_level = self.counts("bbox", threshold, category_id)
        il_mcc = float(image_level["IL_MCC"])
        # IL_FPR: of the pairs without an instance (the concept absent), the share with a detection
        il_fpr = float(image_level["IL_FPR"]) if image_level["negative_pairs"] else UNDEFINED
        out = {IL_MCC_KEY: il_mcc, IL_FPR_KEY: il_fpr}
        for iou_type in IOU_TYPES:
            c = image_level if iou_type == "bbox" else self.counts(iou_type, threshold, category_id)
            pm = float(np.mean(c["positive_micro_F1"])) if c["positive_pairs"] else UNDEFINED
            out[f"{iou_type}/pmF1"] = pm
            out[f"{iou_type}/cgF1"] = pm * il_mcc + 0.0 if c["positive_pairs"] else UNDEFINED  # + 0.0: no -0.0
        return out

    def score(self, threshold: float, per_category: bool = True) -> SacoResult:
        """The metrics at ``threshold`` (and per category unless ``per_category=False``)."""
        threshold = float(threshold)
        metrics = {THRESHOLD_KEY: threshold, **self._scores(threshold)}
        categories: Dict[str, Dict[str, Dict[str, float]]] = {}
        if per_category:
            categories = {iou_type: {} for iou_type in IOU_TYPES}
            for cat_id, name in self.category_names.items():
                s = self._scores(threshold, cat_id)
                for iou_type in IOU_TYPES:
                    categories[iou_type][name] = {
                        "IL_MCC": s[IL_MCC_KEY],
                        "IL_FPR": s[IL_FPR_KEY],
                        "pmF1": s[f"{iou_type}/pmF1"],
                        "cgF1": s[f"{iou_type}/cgF1"],
                    }
        return SacoResult(metrics, categories, self.notes())

    def sweep(self, grid: Sequence[float] = THRESHOLDS) -> Dict[float, Dict[str, float]]:
        """The overall metrics at each threshold of ``grid``."""
        return {float(t): self.score(t, per_category=False).metrics for t in grid}

    def choose_threshold(self, grid: Sequence[float] = THRESHOLDS) -> float:
        """The threshold of ``grid`` with the highest segm cgF1 (bbox cgF1 when no annotation has a
        mask); ties go to the lower threshold. With no instance in the split every cgF1 is -1 and
        the lowest threshold is returned."""
        key = "segm/cgF1" if self.has_masks else "bbox/cgF1"
        best_t, best = None, None
        for t, metrics in sorted(self.sweep(grid).items()):
            if best is None or metrics[key] > best:
                best_t, best = t, metrics[key]
        return best_t


def saco_evaluate(
    dataset: Union[str, dict], detections: Sequence[dict], score_threshold: Optional[float] = None
) -> SacoResult:
    """SA-Co metrics of ``detections`` on ``dataset`` at ``score_threshold``, or at the threshold
    chosen on these same detections when it is None (:meth:`SacoEvaluation.choose_threshold`)."""
    if score_threshold is None:
        ev = SacoEvaluation(dataset, detections)
        return ev.score(ev.choose_threshold())
    return SacoEvaluation(dataset, detections, min_score=score_threshold).score(score_threshold)


def choose_threshold(
    dataset: Union[str, dict], detections: Sequence[dict], grid: Sequence[float] = THRESHOLDS
) -> float:
    """The score threshold maximising cgF1 of ``detections`` on ``dataset`` (see the module doc)."""
    return SacoEvaluation(dataset, detections, min_score=min(grid)).choose_threshold(grid)


def _pairs(dataset: dict) -> Tuple[List[dict], Dict[Tuple[int, int], int], Dict[int, List[int]]]:
    """One pseudo-image per (image, category): its COCO image entry (the image's size, for masks),
    the pair id of each (image id, category id), the pair ids of each category."""
    images, pair_of, by_category = [], {}, defaultdict(list)
    categories = dataset["categories"]
    for i, image in enumerate(dataset["images"]):
        for j, category in enumerate(categories):
            pair = i * len(categories) + j + 1
            images.append({"id": pair, "height": image["height"], "width": image["width"]})
            pair_of[image["id"], category["id"]] = pair
            by_category[category["id"]].append(pair)
    return images, pair_of, {c["id"]: by_category[c["id"]] for c in categories}


def _rekeyed(items: Sequence[dict], pair_of: Dict[Tuple[int, int], int], what: str, renumber: bool = False):
    out = []
    for n, item in enumerate(items, start=1):
        key = (item["image_id"], item["category_id"])
        if key not in pair_of:
            raise ValueError(f"{what} {item.get('id', n)}: image {key[0]} / category {key[1]} is not in the dataset")
        out.append(dict(item, image_id=pair_of[key], **({"id": n} if renumber else {})))
    return out


def _copies(items: Sequence[dict]) -> List[dict]:
    return [dict(item) for item in items]
