"""A split's ground truth as pycocotools reads it, shared by COCO AP (coco.py) and SA-Co (saco.py).

Annotations without a mask (box-only data, or a segmentation the validator removed) have no
shape for segm scoring: :func:`segm_ground_truth` makes their box an ignore region
(``iscrowd=1``, COCOeval's crowd semantics).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from typing import Tuple, Union


def load_dataset(ann: Union[str, dict]) -> dict:
    """A COCO dataset dict, from an annotation file's path or the dict itself (not copied)."""
    if isinstance(ann, dict):
        return ann
    with open(ann) as f:
        return json.load(f)


def coco_api(dataset: dict):
    """pycocotools' COCO over ``dataset`` (its index printout swallowed)."""
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def has_mask(ann: dict) -> bool:
    return ann.get("segmentation") not in (None, [])


def segm_ground_truth(dataset: dict) -> Tuple[dict, int]:
    """The split for segm scoring: annotations without a mask become ignore regions over their
    box (COCOeval's crowd semantics), since COCOeval needs a mask for every annotation.
    Returns the (shallow-copied) dataset and how many annotations had no mask."""
    dataset = copy.copy(dataset)
    annotations, unmasked = [], 0
    for ann in dataset["annotations"]:
        if not has_mask(ann):
            x, y, w, h = ann["bbox"]
            ann = dict(ann, segmentation=[[x, y, x + w, y, x + w, y + h, x, y + h]], iscrowd=1)
            unmasked += 1
        annotations.append(ann)
    dataset["annotations"] = annotations
    return dataset, unmasked
