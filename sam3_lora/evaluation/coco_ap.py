"""COCO bbox and segm AP of detections on a split, with pycocotools' COCOeval.

Every category is asked of every image, so false positives on absent categories count against AP.
Annotations without a mask (box-only data, or a segmentation the validator removed) count fully for
bbox AP; for segm AP their box is an ignore region (as COCO treats crowds): a detection there neither
counts nor costs, and the note saying how many there were goes with the figures.
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Dict, List, Tuple

from sam3_lora.evaluation.ground_truth import coco_api, load_dataset, segm_ground_truth

log = logging.getLogger("sam3_lora.evaluation.coco_ap")

# COCOeval.stats order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


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
