"""Synthetic inputs for tests: SAM3 batches from sam3's Datapoint classes and collator,
and non-zero LoRA weights.

Each image holds one or two filled rectangles; the query "square" asks for them and
the query "circle" is a negative (no target), as SAM3's hard negatives are.
"""

from __future__ import annotations

import torch
from sam3.train.data.collator import collate_fn_api
from sam3.train.data.sam3_image_dataset import (
    Datapoint,
    FindQueryLoaded,
    Image,
    InferenceMetadata,
    Object,
)
from torch import nn

from sam3_lora.lora import LoraDelta


def _metadata(image_id: int, category_id: int, size) -> InferenceMetadata:
    return InferenceMetadata(
        coco_image_id=image_id,
        original_image_id=image_id,
        original_category_id=category_id,
        original_size=size,
        object_id=0,
        frame_index=0,
    )


def make_datapoint(img_size: int, generator: torch.Generator, image_id: int) -> Datapoint:
    image = torch.randn(3, img_size, img_size, generator=generator) * 0.1
    objects = []
    for obj_id in range(int(torch.randint(1, 3, (1,), generator=generator))):
        x0, y0 = (torch.randint(0, img_size // 2, (2,), generator=generator)).tolist()
        w, h = (torch.randint(img_size // 6, img_size // 2, (2,), generator=generator)).tolist()
        x1, y1 = min(x0 + w, img_size), min(y0 + h, img_size)
        image[:, y0:y1, x0:x1] = 1.0
        mask = torch.zeros(img_size, img_size, dtype=torch.bool)
        mask[y0:y1, x0:x1] = True
        box = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dtype=torch.float32) / img_size
        objects.append(Object(bbox=box, area=float((x1 - x0) * (y1 - y0)), object_id=obj_id, segment=mask))
    size = (img_size, img_size)
    queries = [
        FindQueryLoaded(
            query_text="square",
            image_id=0,
            object_ids_output=list(range(len(objects))),
            is_exhaustive=True,
            inference_metadata=_metadata(image_id, 1, size),
        ),
        FindQueryLoaded(
            query_text="circle",
            image_id=0,
            object_ids_output=[],
            is_exhaustive=True,
            inference_metadata=_metadata(image_id, 2, size),
        ),
    ]
    return Datapoint(find_queries=queries, images=[Image(data=image, objects=objects, size=size)])


def make_batch(img_size: int, batch_size: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    points = [make_datapoint(img_size, g, i) for i in range(batch_size)]
    return collate_fn_api(points, dict_key="all", with_seg_masks=True)["all"]


def final_outputs(find_stages) -> dict:
    """The last interactive step of the last stage of a SAM3Output (the model's answer)."""
    return find_stages.output[-1][-1]


def randomize_lora(module: nn.Module, seed: int = 0) -> None:
    """Give every B a non-zero value so the update actually does something."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, LoraDelta):
            with torch.no_grad():
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.1)


def lora_training_losses(model: nn.Module, steps: int = 3, lr: float = 1e-2, device="cpu", bf16: bool = False):
    """AdamW steps on the LoRA parameters over fixed synthetic batches (bf16 autocast if asked),
    seeded alike for every model; the losses, stacked."""
    from sam3.model.utils.misc import copy_data_to_device

    from sam3_lora.lora import lora_parameters
    from sam3_lora.training.loss import build_sam3_loss, compute_loss, core_loss

    device = torch.device(device)
    torch.manual_seed(0)
    loss_fn = build_sam3_loss(num_queries=model.transformer.decoder.num_queries)
    opt = torch.optim.AdamW(lora_parameters(model), lr=lr)
    losses = []
    for step in range(steps):
        batch = make_batch(112, 2, seed=step)
        if device.type != "cpu":
            batch = copy_data_to_device(batch, device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = core_loss(compute_loss(model, loss_fn, batch))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses)
