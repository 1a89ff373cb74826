"""``trainer.compile=true``: each ViT block of the image backbone compiled by ``torch.compile``.

The 1008 px input gives every block the same shapes, so each compiles once (the blocks of
one kind share the compiled code). ``nn.Module.compile`` compiles in place: parameter
names, the state dict, LoRA layers and checkpoints are unchanged. The first step pays the
compilation (seconds to minutes); outputs equal eager ones up to kernel rounding.
"""

from __future__ import annotations

from torch import nn

from sam3_lora.sam3_compat.module_paths import trunk_of


def compile_vit_blocks(model: nn.Module, mode: str = "default") -> int:
    """Compile the image backbone's blocks in place; returns how many were compiled."""
    blocks = trunk_of(model).blocks
    for block in blocks:
        block.compile(mode=mode)
    return len(blocks)
