"""SAM3's training loss, assembled from sam3's own classes with upstream's weights.

Weights follow Meta's Roboflow100-VL / ODinW fine-tuning configs: boxes (L1 5, GIoU 2),
classification with presence (CE 20, presence 20, pos_weight 10), masks (focal 200,
dice 10), and a one-to-many branch weighted 2 with its own matcher. The one-to-one
Hungarian matcher lives in the model (``out["indices"]``).
"""

from __future__ import annotations

import torch
from torch import nn

from sam3_lora.sam3_compat import cpu as cpu_compat
from sam3_lora.sam3_compat.matcher import hungarian_matcher


def build_sam3_loss(num_queries: int, with_masks: bool = True, normalization: str = "local") -> nn.Module:
    """``normalization="global"`` all-reduces the box count across ranks (DDP)."""
    from sam3.train.loss.loss_fns import Boxes, IABCEMdetr, Masks
    from sam3.train.loss.sam3_loss import Sam3LossWrapper
    from sam3.train.matcher import BinaryOneToManyMatcher

    cpu_compat.install()
    loss_fns = [
        Boxes(weight_dict={"loss_bbox": 5.0, "loss_giou": 2.0}),
        IABCEMdetr(
            pos_weight=10.0,
            weight_dict={"loss_ce": 20.0, "presence_loss": 20.0},
            weak_loss=False,
            alpha=0.25,
            gamma=2,
            use_presence=True,
            pos_focal=False,
            pad_n_queries=num_queries,
            pad_scale_pos=1.0,
        ),
    ]
    if with_masks:
        loss_fns.append(
            Masks(
                weight_dict={"loss_mask": 200.0, "loss_dice": 10.0},
                focal_alpha=0.25,
                focal_gamma=2.0,
                compute_aux=False,
            )
        )
    return Sam3LossWrapper(
        loss_fns_find=loss_fns,
        normalization=normalization,
        matcher=hungarian_matcher(),  # used on auxiliary outputs' one-to-many queries
        o2m_weight=2.0,
        o2m_matcher=BinaryOneToManyMatcher(alpha=0.3, threshold=0.4, topk=4),
        use_o2m_matcher_on_o2m_aux=False,
        scale_by_find_batch_size=True,
    )


def compute_loss(model: nn.Module, loss_fn: nn.Module, batch, forward: nn.Module = None) -> dict:
    """One forward and the loss dict; ``out["core_loss"]`` is what to backpropagate.

    ``forward``: the module to run (e.g. the DDP wrapper of ``model``); default ``model``.
    """
    find_stages = (forward or model)(batch)
    targets = [model.back_convert(t) for t in batch.find_targets]
    return loss_fn(find_stages, targets)


def batch_to_device(batch, device: torch.device):
    """A sam3 batch on ``device`` (as it is on the CPU)."""
    if device.type == "cpu":
        return batch
    from sam3.model.utils.misc import copy_data_to_device

    return copy_data_to_device(batch, device, non_blocking=True)


def core_loss(losses: dict) -> torch.Tensor:
    from sam3.train.loss.loss_fns import CORE_LOSS_KEY

    return losses[CORE_LOSS_KEY]
