"""SAM3 models: sizes (``sizes``), assembly from sam3's classes (``assembly``), the base weights
(``base_checkpoint``: find, check, load ``sam3.pt``; ``sam3_layout``: write it; ``transformers_checkpoint``
and ``transformers_keymap``: a transformers ``Sam3Model`` folder read as base weights), and the ``model``
config group's entries (``builders``)."""

from sam3_lora.models.assembly import build_sam3_sized
from sam3_lora.models.base_checkpoint import BaseCheckpointError
from sam3_lora.models.builders import build_model, build_sam3
from sam3_lora.models.sizes import SIZES, SAM3Size

__all__ = ["SIZES", "BaseCheckpointError", "SAM3Size", "build_model", "build_sam3", "build_sam3_sized"]
