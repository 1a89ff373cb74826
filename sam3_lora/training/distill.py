"""Tuning without forgetting: each step also matches the tuned model to the frozen base on anchor images.

Learning without forgetting (Li & Hoiem 2016; Shmelkov et al. 2017 for detectors), with LoRA's free
teacher: the same model with its adapters off. Each micro-batch, besides the labelled target batch,
``preserve.anchor_batch`` anchor images (unlabelled: another folder, a COCO split's images, or the
target images) are prompted with concepts the base knows (``preserve.vocabulary``) and go through the
same step. The teacher — the base: the model in eval mode with adapters off, without grad; for full
fine-tuning (or LoRA with ``modules_to_save``, trained in place) a frozen copy made before training —
answers the same queries, and the loss pulls the student's query *i* towards the teacher's query *i*:

* presence and class logits: the binary KL divergence to the teacher's probabilities, every query
  (a confident "nothing here" is knowledge too);
* boxes (L1 and generalized IoU) and masks (binary KL of the logits pooled to ``mask_size``), each
  query weighted by the teacher's confidence (its class × presence probability), so the base's
  detections count and its empty queries do not.

Every term is 0 where student and teacher agree, so at initialisation (LoRA B = 0, dropout off) the
loss is 0; it is ``preserve.weight`` times the sum of the terms, added to the labelled loss.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss

from sam3_lora.core.schema import REQUIRED, Valid, at_least, number_in, setting
from sam3_lora.data.config import ToySpec
from sam3_lora.data.prompt_lists import is_prompt_list
from sam3_lora.lora import adapters_off, lora_modules

log = logging.getLogger(__name__)

TARGET_IMAGES = "target"  # preserve.images: the training split's own images


@dataclass
class DistillConfig:
    """The ``preserve=distill`` options (``conf/preserve/``); ``preserve=none`` trains without them."""

    weight: float = setting(
        1.0,
        "the distillation loss's weight against the labelled loss (choose it on valid splits, never on test)",
        number_in(0, float("inf"), "a number > 0", low_open=True),
    )
    anchor_batch: int = setting(
        4, "anchor images per micro-batch, through the same step as the labelled batch", at_least(1)
    )
    images: str = setting(
        REQUIRED,
        "the anchor images: a folder of images, a COCO annotation file (its images; labels ignored), or 'target' "
        "(the training images). Never images of a scored split: that is refused",
        names_run=False,
    )
    img_folder: Optional[str] = setting(
        None,
        "with a COCO file: the folder its file_names are relative to (default: the file's folder)",
        names_run=False,
    )
    vocabulary: Any = setting(
        REQUIRED,
        "the anchor concepts, what the base knows (e.g. COCO's 80 names for SAM3): a list, or a text file with "
        "one name a line",
        Valid(lambda v: v is not None and is_prompt_list(v), "a list of names or the path of a text file"),
        names_run=False,
    )
    prompts_per_image: int = setting(
        4, "anchor concepts asked of each anchor image, drawn at random each time (-1: all)", at_least(-1)
    )
    keep_training_categories: bool = setting(
        False,
        "with images=target: also ask the training categories (the teacher's answers then contradict the labels); "
        "otherwise they are left out of the vocabulary there",
    )
    mask_size: int = setting(32, "masks are compared as logits average-pooled to this side", at_least(1))
    generate: Optional[ToySpec] = setting(
        None,
        "toy shapes generated on first use so that `images` is their train folder (the toy world)",
        names_run=False,
    )


# ----------------------------------------------------------------------------- the loss
def final_outputs(outputs) -> Dict[str, Tensor]:
    """The last stage's last step of a SAM3 forward (the image model has one)."""
    out = outputs[-1]
    return out[-1] if isinstance(out, list) else out


def binary_kl(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """KL(teacher || student) of Bernoulli variables given as logits, elementwise; 0 where they are equal."""
    target = teacher_logits.sigmoid()
    return F.binary_cross_entropy_with_logits(
        student_logits, target, reduction="none"
    ) - F.binary_cross_entropy_with_logits(teacher_logits, target, reduction="none")


def _pooled(masks: Tensor, size: int) -> Tensor:
    return F.adaptive_avg_pool2d(masks.float(), size) if masks.shape[-1] > size else masks.float()


def distillation_terms(student: Dict[str, Tensor], teacher: Dict[str, Tensor], mask_size: int) -> Dict[str, Tensor]:
    """Query i of the student against query i of the teacher (see the module docstring); each a scalar."""
    s_logits, t_logits = student["pred_logits"].float(), teacher["pred_logits"].float()  # [B, Q, 1]
    s_presence, t_presence = student["presence_logit_dec"].float(), teacher["presence_logit_dec"].float()  # [B, 1]
    confidence = (t_logits.sigmoid() * t_presence.sigmoid().unsqueeze(1)).squeeze(-1)  # [B, Q]
    total = confidence.sum().clamp_min(1e-6)
    s_boxes, t_boxes = student["pred_boxes_xyxy"].float(), teacher["pred_boxes_xyxy"].float()
    l1 = (student["pred_boxes"].float() - teacher["pred_boxes"].float()).abs().sum(-1)
    s_flat, t_flat = s_boxes.reshape(-1, 4), t_boxes.reshape(-1, 4)
    # less the teacher's own (torchvision's eps makes equal boxes ~1e-7 apart): 0 where they agree
    giou = generalized_box_iou_loss(s_flat, t_flat, reduction="none") - generalized_box_iou_loss(
        t_flat, t_flat, reduction="none"
    )
    terms = {
        "distill_class": binary_kl(s_logits, t_logits).mean(),
        "distill_presence": binary_kl(s_presence, t_presence).mean(),
        "distill_bbox": (l1 * confidence).sum() / total,
        "distill_giou": (giou.reshape(confidence.shape) * confidence).sum() / total,
    }
    if "pred_masks" in student and "pred_masks" in teacher:
        s_masks, t_masks = _pooled(student["pred_masks"], mask_size), _pooled(teacher["pred_masks"], mask_size)
        terms["distill_mask"] = (binary_kl(s_masks, t_masks).mean((-1, -2)) * confidence).sum() / total
    return terms


# Each term's weight in the sum: the boxes as in SAM3's own loss (L1 5, GIoU 2); the KL terms 1.
TERM_WEIGHTS = {
    "distill_class": 1.0,
    "distill_presence": 1.0,
    "distill_bbox": 5.0,
    "distill_giou": 2.0,
    "distill_mask": 1.0,
}


# ----------------------------------------------------------------------------- the teacher
class Teacher:
    """The base model's answers: the tuned model itself with its adapters off (nothing copied), or a
    frozen copy of the model as it was before training (full fine-tuning; LoRA with modules_to_save)."""

    def __init__(self, model: nn.Module, frozen_copy: bool):
        self.frozen: Optional[nn.Module] = None
        if frozen_copy:
            self.frozen = copy.deepcopy(model).requires_grad_(False).eval()
            size = sum(p.numel() * p.element_size() for p in self.frozen.parameters()) / 2**30
            log.info("distillation teacher: a frozen copy of the model before training (%.2f GB of weights)", size)
        else:
            log.info("distillation teacher: the model itself with its adapters off (no copy)")

    @classmethod
    def for_model(cls, model: nn.Module, tuning) -> "Teacher":
        """Adapters off where the adapters are all that trains; a copy where base weights train too."""
        lora_only = bool(list(lora_modules(model))) and not getattr(
            getattr(tuning, "config", None), "modules_to_save", []
        )
        return cls(model, frozen_copy=not lora_only)

    @torch.no_grad()
    def __call__(self, model: nn.Module, batch) -> Dict[str, Tensor]:
        if self.frozen is not None:
            return final_outputs(self.frozen(batch))
        was_training = model.training
        model.eval()
        try:
            with adapters_off(model):
                return final_outputs(model(batch))
        finally:
            model.train(was_training)


class Distillation:
    """The preservation term of a training step: the next anchor batch through student and teacher."""

    def __init__(self, config: DistillConfig, teacher: Teacher, anchors: torch.utils.data.DataLoader):
        self.config = config
        self.teacher = teacher
        self.anchors = anchors
        self._batches = self._cycle()

    def _cycle(self) -> Iterator:
        epoch = 0
        while True:
            self.anchors.sampler.set_epoch(epoch)
            yield from self.anchors
            epoch += 1

    def loss(self, model: nn.Module, forward: nn.Module, to_device: Callable) -> Dict[str, Tensor]:
        """``loss_distill`` (weighted, what is backpropagated) and each term, on the next anchor batch
        (``to_device``: moves it); ``forward``: the module the student runs through (DDP's wrapper of ``model``)."""
        batch = to_device(next(self._batches))
        teacher = self.teacher(model, batch)
        student = final_outputs(forward(batch))
        terms = distillation_terms(student, teacher, self.config.mask_size)
        total = sum(TERM_WEIGHTS[k] * v for k, v in terms.items())
        return {"loss_distill": self.config.weight * total, **{f"loss_{k}": v.detach() for k, v in terms.items()}}
