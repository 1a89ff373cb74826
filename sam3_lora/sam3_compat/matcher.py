"""sam3's Hungarian matcher as the stock builder and upstream configs set it, behind a check of its
inputs: on NaN costs scipy's solver raises an opaque ``ValueError`` ("matrix contains invalid numeric
entries") from inside the forward; :class:`FinitePredictionsMatcher` names the problem instead."""

from __future__ import annotations

import torch
from torch import nn


class NonFinitePredictions(RuntimeError):
    """The model's predictions hold NaN/inf, so they cannot be matched to the targets."""


class FinitePredictionsMatcher(nn.Module):
    """sam3's in-model matcher behind a check of its inputs (the trainer treats the error it
    raises like a non-finite loss)."""

    def __init__(self, matcher: nn.Module):
        super().__init__()
        self.matcher = matcher

    def forward(self, outputs, *args, **kwargs):
        finite = torch.isfinite(outputs["pred_logits"]).all() & torch.isfinite(outputs["pred_boxes"]).all()
        if not finite:
            raise NonFinitePredictions("the model predicted NaN/inf logits or boxes")
        return self.matcher(outputs, *args, **kwargs)


def hungarian_matcher():
    """The one-to-one matcher of the stock builder and upstream configs."""
    from sam3.train.matcher import BinaryHungarianMatcherV2

    return BinaryHungarianMatcherV2(
        focal=True, cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, alpha=0.25, gamma=2, stable=False
    )
