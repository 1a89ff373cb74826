"""transformers' ``Sam3Config`` for a SAM3 size of ours, and the optional-extra check.

Every number comes from the same ``SAM3Size`` that builds our model (``sam3_lora/models/sizes.py``),
so the stock 840M model and the small CPU sizes alike are expressible. Where transformers' defaults
differ from what sam3 computes, the value sam3 uses is written (see ``VIT_LAYER_NORM_EPS``).
"""

from __future__ import annotations

from importlib import metadata as importlib_metadata

from sam3_lora.core.errors import UserError
from sam3_lora.models.sizes import SAM3Size

# The transformers releases this interop was written for and tested with.
TRANSFORMERS_REQUIREMENT = "transformers>=5.23,<6"
MIN_TRANSFORMERS = (5, 23)

# sam3's ViT builds its LayerNorms with eps=1e-5 (vitdet.ViT: norm_layer="LayerNorm" -> eps=1e-5);
# transformers' Sam3ViTConfig defaults to 1e-6. The config we write says what sam3 computes.
VIT_LAYER_NORM_EPS = 1e-5
# Fixed in sam3's builders: CLIP's vocabulary and context, its 512-wide projection, sam3's ROI size.
TEXT_VOCAB, TEXT_CONTEXT, TEXT_PROJECTION, ROI_SIZE = 49408, 32, 512, 7
CLIP_EOT_TOKEN = 49407
NECK_SCALES = (4.0, 2.0, 1.0, 0.5)


class MissingExtraError(UserError, ImportError):
    """The optional transformers dependency is not installed (or too old)."""


def require_transformers(what: str):
    """transformers, imported now; a clear error naming the extra when it is missing or too old."""
    fix = f"install the Hugging Face extra: pip install -e \".[hf]\" (or pip install '{TRANSFORMERS_REQUIREMENT}')"
    try:
        import transformers
    except ImportError as e:
        raise MissingExtraError(f"{what} needs the transformers package, which is not installed; {fix}") from e
    version = importlib_metadata.version("transformers")
    if tuple(int(x) for x in version.split(".")[:2] if x.isdigit()) < MIN_TRANSFORMERS:
        raise MissingExtraError(f"{what} needs {TRANSFORMERS_REQUIREMENT}; transformers {version} is installed; {fix}")
    return transformers


class ConfigError(UserError, ValueError):
    """A SAM3 size that transformers' Sam3Model cannot express."""


def sam3_config(size: SAM3Size):
    """The ``transformers.Sam3Config`` of the SAM3 image model of ``size`` (Sam3Model, random init,
    has exactly the key set of ``sam3_lora.models.transformers_keymap.to_transformers`` of that model)."""
    transformers = require_transformers("a transformers Sam3Config")
    size.check()
    if max(size.global_att_blocks) != size.vit_depth - 1:
        # sam3 takes the ViT's output after its last global-attention block; transformers after the
        # last block. They agree only when the last block is a global one (true of every size here).
        raise ConfigError(
            f"global_att_blocks={size.global_att_blocks} does not end at the last ViT block ({size.vit_depth - 1}); "
            "transformers' Sam3ViTModel returns the last block's output, sam3 the last global block's"
        )
    grid = size.img_size // size.patch_size
    vit = transformers.Sam3ViTConfig(
        hidden_size=size.vit_dim,
        intermediate_size=int(size.vit_dim * size.vit_mlp_ratio),
        num_hidden_layers=size.vit_depth,
        num_attention_heads=size.vit_heads,
        image_size=size.img_size,
        patch_size=size.patch_size,
        window_size=size.window_size,
        global_attn_indexes=list(size.global_att_blocks),
        pretrain_image_size=size.pretrain_img_size,
        layer_norm_eps=VIT_LAYER_NORM_EPS,
        hidden_act="gelu",
    )
    vision = transformers.Sam3VisionConfig(
        backbone_config=vit,
        fpn_hidden_size=size.d_model,
        backbone_feature_sizes=[[grid * 4, grid * 4], [grid * 2, grid * 2], [grid, grid]],
        scale_factors=list(NECK_SCALES),
    )
    text = transformers.CLIPTextConfig(
        vocab_size=TEXT_VOCAB,
        hidden_size=size.text_width,
        intermediate_size=size.text_width * 4,  # sam3's text blocks: mlp_ratio 4
        projection_dim=TEXT_PROJECTION,
        num_hidden_layers=size.text_layers,
        num_attention_heads=size.text_heads,
        max_position_embeddings=TEXT_CONTEXT,
        hidden_act="gelu",  # sam3: nn.GELU (exact); CLIPTextConfig's own default is quick_gelu
        layer_norm_eps=1e-5,
        eos_token_id=CLIP_EOT_TOKEN,
    )
    transformer_layers = dict(
        hidden_size=size.d_model,
        num_attention_heads=size.heads,
        intermediate_size=size.dim_feedforward,
        dropout=size.dropout,
        hidden_act="relu",
    )
    return transformers.Sam3Config(
        vision_config=vision,
        text_config=text,
        geometry_encoder_config=transformers.Sam3GeometryEncoderConfig(
            num_layers=size.geometry_layers, roi_size=ROI_SIZE, **transformer_layers
        ),
        detr_encoder_config=transformers.Sam3DETREncoderConfig(num_layers=size.encoder_layers, **transformer_layers),
        detr_decoder_config=transformers.Sam3DETRDecoderConfig(
            num_layers=size.decoder_layers, num_queries=size.num_queries, **transformer_layers
        ),
        mask_decoder_config=transformers.Sam3MaskDecoderConfig(
            hidden_size=size.d_model, num_attention_heads=size.heads, num_upsampling_stages=3, dropout=0.0
        ),
    )
