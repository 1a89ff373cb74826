"""A model's detections on a loader's batches, as COCO results: sam3's own postprocessor turns
outputs into boxes, scores (presence included) and RLE masks at the original image size, the label
being the queried category id (text prompt = category name).

Concept routing (``base_for``): the categories a tuned model was not trained on are answered by the
base model inside it (its adapters off, :func:`sam3_lora.lora.adapters_off`), the others by the tuned
model; each batch runs twice. When no adapter sits in the image trunk its output is the same for both
runs, so the second reuses it: the extra cost is then the text/encoder/decoder path alone, otherwise
one more trunk pass per batch.
"""

from __future__ import annotations

import contextlib
from typing import Collection, Dict, Iterable, Iterator, List, Optional

import torch
from torch import nn

from sam3_lora.lora import adapters_off
from sam3_lora.lora.inject import holds_adapters
from sam3_lora.sam3_compat.module_paths import trunk_of


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
    base_for: Optional[Collection[int]] = None,
) -> List[dict]:
    """COCO-format detections (with RLE masks) for every image the batches cover. ``base_for``: the
    category ids answered with the adapters off (concept routing; see the module docstring)."""
    from sam3.model.utils.misc import copy_data_to_device

    post = _postprocessor(max_dets, score_threshold)
    amp = autocast or contextlib.nullcontext()
    was_training = model.training
    model.eval()
    detections: List[dict] = []
    try:
        with trunk_reused(model) if base_for and not holds_adapters(trunk_of(model)) else contextlib.nullcontext():
            for batch in batches:
                batch = copy_data_to_device(batch, device, non_blocking=True)
                with amp:
                    found = _to_coco(post.process_results(model(batch), batch.find_metadatas))
                if base_for:
                    with amp, adapters_off(model):
                        base = _to_coco(post.process_results(model(batch), batch.find_metadatas))
                    found = [d for d in found if d["category_id"] not in base_for]
                    found += [d for d in base if d["category_id"] in base_for]
                detections.extend(found)
    finally:
        model.train(was_training)
    return detections


@contextlib.contextmanager
def trunk_reused(model: nn.Module) -> Iterator[None]:
    """Inside, the image trunk given the very tensor it was given last returns its last output
    (the trunk holds no adapter, so the routed second run of a batch would compute it again)."""
    trunk = trunk_of(model)
    stock, last = trunk.forward, {}

    def forward(x, *args, **kwargs):
        if last.get("input") is not x or args or kwargs:
            last.update(input=x, output=stock(x, *args, **kwargs))
        return last["output"]

    trunk.forward = forward
    try:
        yield
    finally:
        del trunk.forward
