"""Workarounds that let sam3 0.1.4 build and train without a GPU. Nothing else.

Each one only acts where CUDA is absent (or, for the loss, where the tensors are
not on a GPU), so behaviour on CUDA is exactly stock sam3's.

* ``position_encoding.PositionEmbeddingSine`` and ``decoder.TransformerDecoder``
  allocate their precomputed caches with ``device="cuda"`` when built at 1008 px:
  while building, ``applied()`` sends such allocations to the CPU.
* ``geometry_encoders.SequenceGeometryEncoder._encode_boxes`` calls
  ``.pin_memory()``, which needs a CUDA driver: without one it becomes a no-op
  (pinning only speeds host-to-GPU copies, and there is no GPU to copy to).
* ``train.loss.loss_fns.sigmoid_focal_loss`` defaults to ``triton=True`` (GPU
  kernels): for tensors not on a GPU the torch implementation beside it is used.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch.overrides import TorchFunctionMode


class _CpuOnlyMode(TorchFunctionMode):
    """Inside: ``device="cuda"`` factory calls land on the CPU, ``pin_memory()`` is a no-op."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.pin_memory:
            return args[0]
        device = kwargs.get("device")
        if device is not None and torch.device(device).type == "cuda":
            kwargs = {**kwargs, "device": "cpu"}
        return func(*args, **kwargs)


@contextlib.contextmanager
def applied():
    """Context for building sam3 models; does nothing on a machine with CUDA."""
    install()
    if torch.cuda.is_available():
        yield
        return
    with _CpuOnlyMode():
        yield


_installed = False


def install() -> None:
    """Patch the two runtime call sites above, once per process, only where needed."""
    global _installed
    if _installed:
        return
    _installed = True
    from sam3.train.loss import loss_fns

    stock_focal = loss_fns.sigmoid_focal_loss

    @functools.wraps(stock_focal)
    def sigmoid_focal_loss(inputs, targets, *args, **kwargs):
        if not inputs.is_cuda:
            kwargs["triton"] = False
        return stock_focal(inputs, targets, *args, **kwargs)

    loss_fns.sigmoid_focal_loss = sigmoid_focal_loss

    if not torch.cuda.is_available():
        from sam3.model.geometry_encoders import SequenceGeometryEncoder

        stock_encode_boxes = SequenceGeometryEncoder._encode_boxes

        @functools.wraps(stock_encode_boxes)
        def _encode_boxes(self, *args, **kwargs):
            with _CpuOnlyMode():
                return stock_encode_boxes(self, *args, **kwargs)

        SequenceGeometryEncoder._encode_boxes = _encode_boxes
