"""COCO bbox and segm AP of a SAM3 model on a split, with pycocotools' COCOeval.

Every category is asked of every image (text prompt = category name); sam3's own
postprocessor turns outputs into boxes, scores and RLE masks at the original image
size; COCOeval scores them against the split's annotation file.

Annotations without a mask (box-only data, or a segmentation the validator removed)
count fully for bbox AP; for segm AP their box is an ignore region (as COCO treats
crowds): a detection there neither counts nor costs, and the note saying how many
there were goes with the figures.

:class:`Evaluator` (training's periodic and final evaluation) scores the same detections
with the SA-Co metrics too (``saco.py``).
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from sam3_lora.evaluation.ground_truth import coco_api, load_dataset, segm_ground_truth
from sam3_lora.evaluation.saco import saco_evaluate

log = logging.getLogger("sam3_lora.evaluation.coco")

# COCOeval.stats order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _postprocessor(max_dets: int, score_threshold: float = -1.0):
    """sam3's own postprocessor: boxes and RLE masks at the original image size, scores
    including the presence head, labels = the queried category id."""
    from sam3.eval.postprocessors import PostProcessImage

    return PostProcessImage(
        max_dets_per_img=max_dets,
        iou_type="segm",
        to_cpu=True,
        use_original_ids=True,
        use_original_sizes_box=True,
        use_original_sizes_mask=True,
        convert_mask_to_rle=True,
        always_interpolate_masks_on_gpu=False,
        use_presence=True,
        detection_threshold=score_threshold,
    )


def _to_coco(results: Dict[int, dict]) -> List[dict]:
    detections = []
    for image_id, r in results.items():
        boxes = r["boxes"].tolist()
        for (x0, y0, x1, y1), score, label, rle in zip(
            boxes, r["scores"].tolist(), r["labels"].tolist(), r["masks_rle"]
        ):
            detections.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(label),
                    "score": float(score),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "segmentation": rle,
                }
            )
    return detections


@torch.no_grad()
def predict(
    model: nn.Module,
    batches: Iterable,
    device: torch.device,
    max_dets: int = 100,
    autocast: contextlib.AbstractContextManager = None,
    score_threshold: float = -1.0,
) -> List[dict]:
    """COCO-format detections (with RLE masks) for every image the batches cover."""
    from sam3.model.utils.misc import copy_data_to_device

    post = _postprocessor(max_dets, score_threshold)
    was_training = model.training
    model.eval()
    detections: List[dict] = []
    try:
        for batch in batches:
            batch = copy_data_to_device(batch, device, non_blocking=True)
            with autocast or contextlib.nullcontext():
                stages = model(batch)
            results = post.process_results(stages, batch.find_metadatas)
            detections.extend(_to_coco(results))
    finally:
        model.train(was_training)
    return detections


def coco_evaluate(
    ann_file: str, detections: List[dict], iou_types=("bbox", "segm")
) -> Tuple[Dict[str, float], Dict[str, Dict[str, float]], List[str]]:
    """COCOeval per IoU type: ``({"bbox/AP": ...}, {"bbox": {category name: AP}}, notes)``.

    A stat is -1 where COCOeval has no ground truth to score it (e.g. no small objects);
    with no detections at all every stat is 0. ``notes`` says what the figures leave out
    (annotations without a mask, for segm).
    """
    from pycocotools.cocoeval import COCOeval

    metrics: Dict[str, float] = {}
    per_category: Dict[str, Dict[str, float]] = {}
    notes: List[str] = []
    dataset = load_dataset(ann_file)
    with contextlib.redirect_stdout(io.StringIO()):
        gts = {"bbox": coco_api(dataset)}
        if "segm" in iou_types:
            segm_dataset, unmasked = segm_ground_truth(dataset)
            gts["segm"] = coco_api(segm_dataset) if unmasked else gts["bbox"]
            if unmasked:
                notes.append(
                    f"segm: {unmasked} of {len(dataset['annotations'])} annotations in {ann_file} have no mask; "
                    "their boxes are ignore regions (detections there neither count nor cost)"
                )
        names = {c["id"]: c["name"] for c in dataset["categories"]}
        for iou_type in iou_types:
            gt = gts[iou_type]
            if not detections:
                metrics.update({f"{iou_type}/{n}": 0.0 for n in STAT_NAMES})
                per_category[iou_type] = {name: 0.0 for name in names.values()}
                continue
            ev = COCOeval(gt, gt.loadRes([dict(d) for d in detections]), iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            metrics.update({f"{iou_type}/{n}": float(v) for n, v in zip(STAT_NAMES, ev.stats)})
            # precision: [IoU thresholds, recall points, categories, area ranges, max dets]
            precision = ev.eval["precision"][:, :, :, 0, -1]
            per_category[iou_type] = {}
            for k, cat_id in enumerate(ev.params.catIds):
                p = precision[:, :, k]
                per_category[iou_type][names[cat_id]] = float(p[p > -1].mean()) if (p > -1).any() else -1.0
    for note in notes:
        log.info("%s", note)
    return metrics, per_category, notes


def coco_metrics(ann_file: str, detections: List[dict], iou_types=("bbox", "segm")) -> Dict[str, float]:
    return coco_evaluate(ann_file, detections, iou_types)[0]


@dataclass
class Evaluator:
    """COCO AP and SA-Co metrics (IL_MCC, pmF1, cgF1; see :mod:`sam3_lora.evaluation.saco`) of the
    model on one split, from one prediction pass."""

    ann_file: str
    loader: torch.utils.data.DataLoader
    max_dets: int = 100

    def __call__(
        self, model: nn.Module, device: torch.device, autocast=None, score_threshold: Optional[float] = None
    ) -> Dict[str, float]:
        """The flat metrics: COCO's ``bbox/AP``, ... and SA-Co's ``saco/threshold``, ``saco/IL_MCC``,
        ``bbox/pmF1``, ``bbox/cgF1``, ``segm/pmF1``, ``segm/cgF1``. ``score_threshold`` None: the
        SA-Co threshold is chosen on this same split (and reported in ``saco/threshold``)."""
        detections = predict(model, self.loader, device, self.max_dets, autocast)
        metrics = coco_metrics(self.ann_file, detections)
        metrics.update(saco_evaluate(self.ann_file, detections, score_threshold).metrics)
        return metrics
