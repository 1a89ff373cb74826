"""Where SAM3's parts sit in ``sam3.model.sam3_image.Sam3Image``, by module path, named once.

LoRA's ``parts``, the trunk and text caches, the frozen-precision lever, compiled blocks and size
measurement all address these modules; their paths are sam3 0.1.4's.
"""

from __future__ import annotations

from torch import nn

TRUNK = "backbone.vision_backbone.trunk"  # the image ViT: most of the compute
TEXT_BACKBONE = "backbone.language_backbone"  # the text encoder with its projection
TEXT_ENCODER = f"{TEXT_BACKBONE}.encoder"
GEOMETRY_ENCODER = "geometry_encoder"
ENCODER = "transformer.encoder"
DECODER = "transformer.decoder"
SEGMENTATION_HEAD = "segmentation_head"


def trunk_of(model: nn.Module) -> nn.Module:
    return model.get_submodule(TRUNK)


def text_backbone_of(model: nn.Module) -> nn.Module:
    return model.get_submodule(TEXT_BACKBONE)


def text_encoder_of(model: nn.Module) -> nn.Module:
    return model.get_submodule(TEXT_ENCODER)
