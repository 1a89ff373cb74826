"""SAM3 image models: the stock full-size one, and the same classes at small sizes.

``build_sam3`` is Meta's own ``sam3.model_builder.build_sam3_image_model`` with the
checkpoint resolved here (a local ``sam3.pt``, or the hub when asked). ``build_sam3_sized``
assembles the identical module tree from sam3's classes at any size, so that a
``SAM3Size`` with the stock numbers gives the stock architecture and a small one
trains on a CPU in a fraction of a second per step.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, FrozenSet, Optional, Tuple

import torch
import yaml
from torch import nn

from sam3_lora import cpu_compat, sdpa_checkpoint
from sam3_lora.errors import UserError
from sam3_lora.loss import hungarian_matcher

HF_REPO = "facebook/sam3"
HF_CHECKPOINT = "sam3.pt"

# The ``model`` config group: one file per command-line option (``model=<file stem>``).
MODEL_CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "model"


class BaseCheckpointError(UserError, ValueError):
    """The base (sam3.pt) checkpoint is missing, unreadable, or not a SAM3 checkpoint."""


def default_bpe_path() -> str:
    """The CLIP BPE vocabulary SAM3's tokenizer needs.

    The sam3 wheel does not ship it; open-clip-torch ships a byte-identical copy.
    """
    import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"BPE vocabulary not found at {path}; reinstall open-clip-torch or set model.bpe_path")
    return str(path)


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


# Named sizes, selectable from config as `model.size=<name>`.
SIZES = {
    "full": SAM3Size(),
    # ~4M parameters: a training step in well under a second on one CPU core.
    "tiny": SAM3Size(
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
    ),
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


@cpu_compat.applied()
def build_sam3_sized(size: SAM3Size, bpe_path: Optional[str] = None, eval_mode: bool = False) -> nn.Module:
    """SAM3's image model assembled from sam3's classes, with the stock wiring, at ``size``.

    Mirrors ``sam3.model_builder.build_sam3_image_model`` module for module (so LoRA
    targets, parameter names and forward behaviour match); only the sizes differ.
    """
    from sam3.model.decoder import TransformerDecoder, TransformerDecoderLayer
    from sam3.model.encoder import TransformerEncoderFusion, TransformerEncoderLayer
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
    )
    backbone = SAM3VLBackbone(visual=neck, text=text, scalp=1)

    encoder = TransformerEncoderFusion(
        layer=TransformerEncoderLayer(
            activation="relu",
            d_model=s.d_model,
            dim_feedforward=s.dim_feedforward,
            dropout=s.dropout,
            pos_enc_at_attn=True,
            pos_enc_at_cross_attn_keys=False,
            pos_enc_at_cross_attn_queries=False,
            pre_norm=True,
            self_attention=_mha(s, batch_first=True),
            cross_attention=_mha(s, batch_first=True),
        ),
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
        layer=TransformerEncoderLayer(
            activation="relu",
            d_model=s.d_model,
            dim_feedforward=s.dim_feedforward,
            dropout=s.dropout,
            pos_enc_at_attn=False,
            pre_norm=True,
            self_attention=_mha(s),
            pos_enc_at_cross_attn_queries=False,
            pos_enc_at_cross_attn_keys=True,
            cross_attention=_mha(s),
        ),
        use_act_ckpt=True,
        add_cls=True,
        add_post_encode_proj=True,
    )
    # The stock builder's matcher; it lives in the model (out["indices"]) for training.
    matcher = None if eval_mode else hungarian_matcher()
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
    encoder = model.backbone.language_backbone.encoder
    with torch.no_grad():
        nn.init.normal_(encoder.positional_embedding, std=0.01)
        if getattr(encoder, "text_projection", None) is not None:
            nn.init.normal_(encoder.text_projection, std=encoder.width**-0.5)


@functools.lru_cache(maxsize=None)
def model_options() -> Dict[str, Tuple[str, str]]:
    """``{option: (_target_, name)}`` for every file of the ``model`` config group."""
    options = {}
    for path in sorted(MODEL_CONF_DIR.glob("*.yaml")):
        spec = yaml.safe_load(path.read_text()) or {}
        options[path.stem] = (spec.get("_target_"), spec.get("name"))
    return options


def model_builders() -> FrozenSet[str]:
    """The ``_target_``s the ``model`` config group uses: all a run directory's config may build."""
    return frozenset(target for target, _ in model_options().values() if target)


def model_option(name: str) -> Optional[str]:
    """The ``model=`` option whose config has ``name: <name>`` (``tiny_toy`` -> ``sam3_tiny_toy``)."""
    return next((option for option, (_, n) in model_options().items() if n == name), None)


def resolve_checkpoint(checkpoint_path: Optional[str], load_from_hub: bool) -> Optional[str]:
    """Where the base weights come from: a file, the hub, or (for tests) nowhere."""
    if checkpoint_path:
        path = Path(os.path.expanduser(str(checkpoint_path)))
        if path.is_file():
            return str(path)
        if not load_from_hub:
            raise BaseCheckpointError(
                f"SAM3 checkpoint not found at '{path}'.\n"
                f"  Download {HF_CHECKPOINT} from https://huggingface.co/{HF_REPO} (gated: accept the licence "
                f"first, then `huggingface-cli download {HF_REPO} {HF_CHECKPOINT}`),\n"
                f"  then set model.checkpoint_path=/path/to/{HF_CHECKPOINT} "
                f"(or model.load_from_hub=true to download it when online)."
            )
    if load_from_hub:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(repo_id=HF_REPO, filename=HF_CHECKPOINT)
    return None


def build_sam3(
    checkpoint_path: Optional[str] = None,
    load_from_hub: bool = False,
    random_init: bool = False,
    bpe_path: Optional[str] = None,
    eval_mode: bool = False,
    enable_segmentation: bool = True,
) -> nn.Module:
    """The stock 840M SAM3 image model, through sam3's own builder and loader.

    Without a checkpoint this stops with instructions, unless ``random_init`` is set
    (architecture checks and counting: no weights needed).
    """
    from sam3.model_builder import build_sam3_image_model

    resolved = None if random_init else resolve_checkpoint(checkpoint_path, load_from_hub)
    if resolved is None and not random_init:
        raise BaseCheckpointError(
            "No SAM3 checkpoint configured: set model.checkpoint_path=/path/to/sam3.pt "
            f"(from https://huggingface.co/{HF_REPO}), or model.load_from_hub=true when online."
        )
    sdpa_checkpoint.install()
    with cpu_compat.applied():
        model = build_sam3_image_model(
            bpe_path=bpe_path or default_bpe_path(),
            device="cpu",
            eval_mode=eval_mode,
            checkpoint_path=None,
            load_from_HF=False,
            enable_segmentation=enable_segmentation,
        )
    init_text_encoder(model)
    model.image_size = SIZES["full"].img_size
    if resolved is not None:
        load_base_checkpoint(model, resolved)
    return model


def load_base_checkpoint(model: nn.Module, checkpoint_path: str) -> None:
    """Load ``sam3.pt`` with sam3's own loader (it strips ``detector.``), after checking
    the file really is a SAM3 checkpoint rather than, say, a LoRA adapter."""
    from sam3.model_builder import _load_checkpoint

    if str(checkpoint_path).endswith(".safetensors"):
        raise BaseCheckpointError(
            f"{checkpoint_path} is a safetensors file; a sam3_lora adapter is loaded with adapter=path "
            "(evaluate, predict, export), and model.checkpoint_path expects the base sam3.pt."
        )
    try:
        # weights_only: tensors and plain containers only; a pickle that would run code is refused.
        ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise BaseCheckpointError(
            f"{checkpoint_path} is not a readable PyTorch checkpoint of tensors ({e}); "
            "model.checkpoint_path expects the base sam3.pt"
        ) from e
    if not isinstance(ckpt, dict):
        raise BaseCheckpointError(
            f"{checkpoint_path} holds a {type(ckpt).__name__}, not a SAM3 checkpoint (a dict of weights); "
            "model.checkpoint_path expects the base sam3.pt"
        )
    state = ckpt["model"] if isinstance(ckpt.get("model"), dict) else ckpt
    found = {k[len("detector.") :] for k in state if isinstance(k, str) and k.startswith("detector.")}
    expected = set(model.state_dict())
    if len(found & expected) < 0.5 * len(expected):
        raise BaseCheckpointError(
            f"{checkpoint_path} does not look like a SAM3 checkpoint for this model: {len(found & expected)} of "
            f"{len(expected)} weights found under 'detector.' (sam3.pt stores the image model there)."
        )
    del ckpt, state
    try:
        _load_checkpoint(model, checkpoint_path)
    except RuntimeError as e:  # size mismatches
        raise BaseCheckpointError(
            f"{checkpoint_path} does not fit model '{getattr(model, 'image_size', '?')} px': {e}"
        ) from e


def save_sam3_state(state_dict: dict, path, **extra) -> Path:
    """Write full weights in sam3.pt's layout (image model under ``detector.``), atomically,
    so ``load_base_checkpoint``, ``model.checkpoint_path`` and stock sam3's loader take them."""
    from sam3_lora.checkpoint import atomic_save

    state = {f"detector.{k}": v.detach().cpu() for k, v in state_dict.items()}
    return atomic_save({"model": state, **extra}, Path(path))


def save_sam3_checkpoint(model: nn.Module, path, **extra) -> Path:
    """``save_sam3_state`` of a model's own weights."""
    return save_sam3_state(model.state_dict(), path, **extra)


def build_model(
    name: str, checkpoint_path: Optional[str] = None, overrides: Optional[dict] = None, **kwargs
) -> nn.Module:
    """Entry used by the ``model`` config group: ``sam3`` or a named size."""
    if name == "sam3":
        return build_sam3(checkpoint_path=checkpoint_path, **kwargs)
    if name not in SIZES:
        raise ValueError(f"unknown model '{name}'; choose one of: sam3, {', '.join(SIZES)}")
    model = build_sam3_sized(dataclasses.replace(SIZES[name], **(overrides or {})), **kwargs)
    if checkpoint_path:
        if not Path(checkpoint_path).is_file():
            raise BaseCheckpointError(f"checkpoint for model '{name}' not found at '{checkpoint_path}'")
        load_base_checkpoint(model, checkpoint_path)
    return model
