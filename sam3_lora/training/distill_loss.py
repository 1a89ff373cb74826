"""Distillation from the frozen base: the term a training step adds, and its teacher (``preserve=distill``).

Knowledge distillation from the base, with LoRA's free teacher: the same model with its adapters off.
What it is depends on the anchor images: on the target's own training images it is learning without
forgetting (Li & Hoiem 2016; Shmelkov et al. 2017 for detectors); on images of the base's own domain it
is rehearsal, the teacher's answers standing in for the labels (pseudo-labels). Each micro-batch, besides the labelled target batch,
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
from typing import Callable, Dict, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss

from sam3_lora.lora import adapters_off

log = logging.getLogger(__name__)


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
    def for_model(cls, model: nn.Module, tuning) -> Teacher:
        """Adapters off where the base stays inside the tuned model (``tuning.base_inside()``); a copy
        where base weights train too."""
        return cls(model, frozen_copy=not tuning.base_inside())

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
    """The preservation term of a training step: the next anchor batch through student and teacher
    (a :class:`~sam3_lora.training.keeping.KeepingTerm`)."""

    term = "loss_distill"

    def __init__(self, config, teacher: Teacher, anchors: torch.utils.data.DataLoader):
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
