"""SAM3's image model assembled from sam3's own classes at any size (``build_sam3_sized``).

With the stock numbers it gives the stock module tree (same LoRA targets, parameter names and
forward); a small size trains on a CPU in a fraction of a second per step.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from sam3_lora.models.sizes import SIZES, SAM3Size
from sam3_lora.sam3_compat import cpu as cpu_compat
from sam3_lora.sam3_compat import sdpa_checkpoint
from sam3_lora.sam3_compat.matcher import FinitePredictionsMatcher, hungarian_matcher
from sam3_lora.sam3_compat.module_paths import text_encoder_of, trunk_of
from sam3_lora.sam3_compat.prompt_tokens import TEXT_CONTEXT_LENGTH, default_bpe_path


def _sine(d_model: int, precompute_resolution: Optional[int] = None):
    from sam3.model.position_encoding import PositionEmbeddingSine

    return PositionEmbeddingSine(
        num_pos_feats=d_model,
        normalize=True,
        scale=None,
        temperature=10000,
        precompute_resolution=precompute_resolution,
    )


def _mha(s: SAM3Size, batch_first: bool = False, dropout: Optional[float] = None):
    from sam3.model.model_misc import MultiheadAttentionWrapper

    return MultiheadAttentionWrapper(
        num_heads=s.heads,
        dropout=s.dropout if dropout is None else dropout,
        embed_dim=s.d_model,
        batch_first=batch_first,
    )


def _encoder_layer(s: SAM3Size, *, pos_enc_at_attn: bool, pos_enc_at_cross_attn_keys: bool, batch_first: bool):
    """A pre-norm encoder layer (self- then cross-attention, ReLU FFN) as the stock builder wires it."""
    from sam3.model.encoder import TransformerEncoderLayer

    return TransformerEncoderLayer(
        activation="relu",
        d_model=s.d_model,
        dim_feedforward=s.dim_feedforward,
        dropout=s.dropout,
        pos_enc_at_attn=pos_enc_at_attn,
        pos_enc_at_cross_attn_keys=pos_enc_at_cross_attn_keys,
        pos_enc_at_cross_attn_queries=False,
        pre_norm=True,
        self_attention=_mha(s, batch_first=batch_first),
        cross_attention=_mha(s, batch_first=batch_first),
    )


@cpu_compat.applied()
def build_sam3_sized(size: SAM3Size, bpe_path: Optional[str] = None, eval_mode: bool = False) -> nn.Module:
    """SAM3's image model assembled from sam3's classes, with the stock wiring, at ``size``.

    Mirrors ``sam3.model_builder.build_sam3_image_model`` module for module (so LoRA
    targets, parameter names and forward behaviour match); only the sizes differ.
    """
    from sam3.model.decoder import TransformerDecoder, TransformerDecoderLayer
    from sam3.model.encoder import TransformerEncoderFusion
    from sam3.model.geometry_encoders import SequenceGeometryEncoder
    from sam3.model.maskformer_segmentation import PixelDecoder, UniversalSegmentationHead
    from sam3.model.model_misc import MLP, DotProductScoring, TransformerWrapper
    from sam3.model.necks import Sam3DualViTDetNeck
    from sam3.model.sam3_image import Sam3Image
    from sam3.model.text_encoder_ve import VETextEncoder
    from sam3.model.tokenizer_ve import SimpleTokenizer
    from sam3.model.vitdet import ViT
    from sam3.model.vl_combiner import SAM3VLBackbone

    sdpa_checkpoint.install()  # text-encoder checkpoint recomputes under the forward's attention kernels
    size.check()
    s = size
    full_res = s.img_size if s == SIZES["full"] else None  # stock precomputes caches at 1008 px
    vit = ViT(
        img_size=s.img_size,
        pretrain_img_size=s.pretrain_img_size,
        patch_size=s.patch_size,
        embed_dim=s.vit_dim,
        depth=s.vit_depth,
        num_heads=s.vit_heads,
        mlp_ratio=s.vit_mlp_ratio,
        norm_layer="LayerNorm",
        drop_path_rate=s.drop_path_rate,
        qkv_bias=True,
        use_abs_pos=True,
        tile_abs_pos=True,
        global_att_blocks=s.global_att_blocks,
        rel_pos_blocks=(),
        use_rope=True,
        use_interp_rope=True,
        window_size=s.window_size,
        pretrain_use_cls_token=True,
        retain_cls_token=False,
        ln_pre=True,
        ln_post=False,
        return_interm_layers=False,
        bias_patch_embed=False,
    )
    neck = Sam3DualViTDetNeck(
        position_encoding=_sine(s.d_model, full_res),
        d_model=s.d_model,
        scale_factors=[4.0, 2.0, 1.0, 0.5],
        trunk=vit,
        add_sam2_neck=False,
    )
    text = VETextEncoder(
        tokenizer=SimpleTokenizer(bpe_path=bpe_path or default_bpe_path()),
        d_model=s.d_model,
        width=s.text_width,
        heads=s.text_heads,
        layers=s.text_layers,
        context_length=TEXT_CONTEXT_LENGTH,
    )
    backbone = SAM3VLBackbone(visual=neck, text=text, scalp=1)

    encoder = TransformerEncoderFusion(
        # image features attend to the prompt: positions on self-attention only
        layer=_encoder_layer(s, pos_enc_at_attn=True, pos_enc_at_cross_attn_keys=False, batch_first=True),
        num_layers=s.encoder_layers,
        d_model=s.d_model,
        num_feature_levels=1,
        frozen=False,
        use_act_checkpoint=True,
        add_pooled_text_to_img_feat=False,
        pool_text_with_mask=True,
    )
    decoder = TransformerDecoder(
        layer=TransformerDecoderLayer(
            activation="relu",
            d_model=s.d_model,
            dim_feedforward=s.dim_feedforward,
            dropout=s.dropout,
            cross_attention=_mha(s),
            n_heads=s.heads,
            use_text_cross_attention=True,
        ),
        num_layers=s.decoder_layers,
        num_queries=s.num_queries,
        return_intermediate=True,
        box_refine=True,
        num_o2m_queries=0,
        dac=True,
        boxRPB="log",
        d_model=s.d_model,
        frozen=False,
        interaction_layer=None,
        dac_use_selfatt_ln=True,
        resolution=full_res,
        stride=s.patch_size if full_res else None,
        use_act_checkpoint=True,
        presence_token=True,
    )
    scoring = DotProductScoring(
        d_model=s.d_model,
        d_proj=s.d_model,
        prompt_mlp=MLP(
            input_dim=s.d_model,
            hidden_dim=s.dim_feedforward,
            output_dim=s.d_model,
            num_layers=2,
            dropout=s.dropout,
            residual=True,
            out_norm=nn.LayerNorm(s.d_model),
        ),
    )
    segmentation_head = UniversalSegmentationHead(
        hidden_dim=s.d_model,
        upsampling_stages=3,
        aux_masks=False,
        presence_head=False,
        dot_product_scorer=None,
        act_ckpt=True,
        cross_attend_prompt=_mha(s, dropout=0.0),
        pixel_decoder=PixelDecoder(num_upsampling_stages=3, interpolation_mode="nearest", hidden_dim=s.d_model),
    )
    geometry_encoder = SequenceGeometryEncoder(
        pos_enc=_sine(s.d_model),
        encode_boxes_as_points=False,
        points_direct_project=True,
        points_pool=True,
        points_pos_enc=True,
        boxes_direct_project=True,
        boxes_pool=True,
        boxes_pos_enc=True,
        d_model=s.d_model,
        num_layers=s.geometry_layers,
        # geometry prompts attend to the image: positions on the image keys only
        layer=_encoder_layer(s, pos_enc_at_attn=False, pos_enc_at_cross_attn_keys=True, batch_first=False),
        use_act_ckpt=True,
        add_cls=True,
        add_post_encode_proj=True,
    )
    # The stock builder's matcher; it lives in the model (out["indices"]) for training, behind
    # the check that names NaN predictions (scipy's solver would fail on them with an opaque error).
    matcher = None if eval_mode else FinitePredictionsMatcher(hungarian_matcher())
    model = Sam3Image(
        backbone=backbone,
        transformer=TransformerWrapper(encoder=encoder, decoder=decoder, d_model=s.d_model),
        input_geometry_encoder=geometry_encoder,
        segmentation_head=segmentation_head,
        num_feature_levels=1,
        o2m_mask_predict=True,
        dot_prod_scoring=scoring,
        use_instance_query=False,
        multimask_output=True,
        inst_interactive_predictor=None,
        matcher=matcher,
    )
    init_text_encoder(model)
    model.image_size = s.img_size  # the only input size RoPE accepts; the data pipeline resizes to it
    return model.eval() if eval_mode else model


def init_text_encoder(model: nn.Module) -> None:
    """Give the text encoder's ``torch.empty`` parameters CLIP's initialisation.

    sam3 leaves ``positional_embedding`` and ``text_projection`` uninitialised (the
    checkpoint fills them); random memory there turns a randomly initialised model's
    outputs into NaN. Loading a checkpoint afterwards overwrites these values.
    """
    encoder = text_encoder_of(model)
    with torch.no_grad():
        nn.init.normal_(encoder.positional_embedding, std=0.01)
        if getattr(encoder, "text_projection", None) is not None:
            nn.init.normal_(encoder.text_projection, std=encoder.width**-0.5)


def measure_size(model: nn.Module) -> SAM3Size:
    """The ``SAM3Size`` a built SAM3 image model has, read off its modules (any builder: stock,
    sized, toy-pretrained), so exports describe the architecture that is really there."""
    trunk = trunk_of(model)
    blocks = list(trunk.blocks)
    patch = trunk.patch_embed.proj.kernel_size[0]
    vit_dim = trunk.patch_embed.proj.out_channels
    pretrain_patches = trunk.pos_embed.shape[1] - 1  # sam3's table has a class-token row first
    text = text_encoder_of(model)
    encoder_layers = model.transformer.encoder.layers
    decoder = model.transformer.decoder
    drop_path = getattr(blocks[-1].drop_path, "drop_prob", 0.0)
    return SAM3Size(
        img_size=int(model.image_size),
        pretrain_img_size=int(round(pretrain_patches**0.5)) * patch,
        patch_size=patch,
        vit_dim=vit_dim,
        vit_depth=len(blocks),
        vit_heads=blocks[0].attn.num_heads,
        vit_mlp_ratio=_out_features(blocks[0].mlp.fc1) / vit_dim,
        window_size=max(b.window_size for b in blocks),
        global_att_blocks=tuple(i for i, b in enumerate(blocks) if b.window_size == 0),
        text_width=text.width,
        text_heads=text.transformer.resblocks[0].attn.num_heads,
        text_layers=len(text.transformer.resblocks),
        d_model=model.transformer.d_model,
        heads=encoder_layers[0].self_attn.num_heads,
        dim_feedforward=_out_features(encoder_layers[0].linear1),
        encoder_layers=len(encoder_layers),
        decoder_layers=len(decoder.layers),
        geometry_layers=len(model.geometry_encoder.encode),
        num_queries=decoder.num_queries,
        drop_path_rate=round(float(drop_path), 6),  # sam3 spaces rates with float32 linspace
        dropout=float(encoder_layers[0].dropout_value),
    )


def _out_features(linear: nn.Module) -> int:
    return getattr(linear, "base_layer", linear).out_features  # a LoRA-wrapped Linear keeps its own as base_layer
