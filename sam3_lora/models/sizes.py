"""SAM3's architecture numbers: the stock 840M model's and the small sizes that train on a CPU."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class SAM3Size:
    """Every size knob of the SAM3 image model. Defaults are the stock 840M model."""

    img_size: int = 1008
    pretrain_img_size: int = 336
    patch_size: int = 14
    vit_dim: int = 1024
    vit_depth: int = 32
    vit_heads: int = 16
    vit_mlp_ratio: float = 4.625
    window_size: int = 24
    global_att_blocks: Tuple[int, ...] = (7, 15, 23, 31)
    text_width: int = 1024
    text_heads: int = 16
    text_layers: int = 24
    d_model: int = 256
    heads: int = 8
    dim_feedforward: int = 2048
    encoder_layers: int = 6
    decoder_layers: int = 6
    geometry_layers: int = 3
    num_queries: int = 200
    drop_path_rate: float = 0.1
    dropout: float = 0.1

    def check(self) -> None:
        """The constraints sam3's classes assert deep inside a forward, checked up front."""
        problems = []
        if self.vit_dim % self.vit_heads or (self.vit_dim // self.vit_heads) % 4:
            problems.append("vit_dim / vit_heads must be an integer divisible by 4 (2-D RoPE)")
        if not any(b < self.vit_depth for b in self.global_att_blocks):
            problems.append("global_att_blocks must contain a block index below vit_depth")
        if self.d_model % 8 or self.d_model % self.heads:
            problems.append("d_model must be divisible by 8 and by heads")
        if self.img_size % self.patch_size:
            problems.append("img_size must be a multiple of patch_size")
        if problems:
            raise ValueError(f"invalid SAM3Size {self}: " + "; ".join(problems))


TINY = SAM3Size(
    img_size=112,
    pretrain_img_size=56,
    vit_dim=64,
    vit_depth=2,
    vit_heads=4,
    vit_mlp_ratio=4.0,
    window_size=4,
    global_att_blocks=(1,),
    text_width=64,
    text_heads=4,
    text_layers=2,
    d_model=64,
    heads=4,
    dim_feedforward=128,
    encoder_layers=1,
    decoder_layers=2,
    geometry_layers=1,
    num_queries=20,
    drop_path_rate=0.0,
    dropout=0.0,
)

# Named sizes, selectable from config as `model.size=<name>`.
SIZES = {
    "full": SAM3Size(),
    # ~4M parameters: a training step in well under a second on one CPU core.
    "tiny": TINY,
    # The toy world's base (model=sam3_tiny_toy): tiny on a finer patch grid (14 x 14 instead of 8 x 8, so
    # an object spans several patches, as it does at 1008 px; tiny's boxes stay coarse) with few queries
    # (a toy image holds one or two objects).
    "toy": dataclasses.replace(TINY, patch_size=8, window_size=7, num_queries=5),
    # Big enough that matrix work dominates (for CPU benchmarks), still minutes not hours.
    "medium": SAM3Size(
        img_size=224,
        pretrain_img_size=112,
        vit_dim=256,
        vit_depth=4,
        vit_heads=8,
        vit_mlp_ratio=4.0,
        window_size=8,
        global_att_blocks=(1, 3),
        text_width=256,
        text_heads=8,
        text_layers=4,
        d_model=128,
        heads=8,
        dim_feedforward=512,
        encoder_layers=2,
        decoder_layers=3,
        geometry_layers=1,
        num_queries=50,
        drop_path_rate=0.0,
        dropout=0.0,
    ),
}
