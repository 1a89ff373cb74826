"""A model's detections on a loader's batches, as COCO results: sam3's own postprocessor turns
outputs into boxes, scores (presence included) and RLE masks at the original image size, the label
being the queried category id (text prompt = category name)."""

from __future__ import annotations

import contextlib
from typing import Dict, Iterable, List

import torch
from torch import nn


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
