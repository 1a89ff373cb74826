"""SAM3 model builders (the ``model`` config group) and sam3's CPU workarounds."""

from sam3_lora.models.builders import (
    SIZES,
    BaseCheckpointError,
    SAM3Size,
    build_model,
    build_sam3,
    build_sam3_sized,
)

__all__ = ["SIZES", "BaseCheckpointError", "SAM3Size", "build_model", "build_sam3", "build_sam3_sized"]
