"""The key map between sam3's image model and transformers' ``Sam3Model``, both directions.

sam3's layout is the state_dict of ``sam3.model.sam3_image.Sam3Image`` (what sam3.pt holds under
``detector.``, and what every model this package builds uses); transformers' layout is
``transformers.Sam3Model``'s state_dict (the Hub's ``detector_model.*`` without that prefix).
Written from a reading of both implementations (sam3 0.1.4; transformers 5.23's modeling_sam3.py).

One table, ``RULES``, pairs a sam3 name pattern with a transformers one. Placeholders:

* ``{n}``: a layer, block or level index, the same number on both sides;
* ``{i}``: the index in sam3's ``MLP.layers`` list, which transformers' ``Sam3DecoderMLP`` calls
  ``layer{i1}`` (``i1 = i + 1``);
* ``{p}``: ``weight`` or ``bias``;
* ``{qkv}`` (transformers side of a packed rule): ``q``, ``k`` or ``v``.

How a tensor changes on the way (``Rule.kind``):

* ``copy``: unchanged;
* ``packed_qkv``: sam3's packed ``[q; k; v]`` rows (the ViT's ``attn.qkv``, every
  ``nn.MultiheadAttention``'s ``in_proj_*``) split into three Linears, and concatenated back;
* ``transpose``: the CLIP text projection, a ``width x 512`` matrix in sam3, a Linear's
  ``512 x width`` weight in transformers;
* ``cls_position``: sam3's ViT position table starts with a row for a class token that sam3 itself
  discards (``pretrain_use_cls_token=True``, ``retain_cls_token=False``); transformers has no such row.

Tensors without a counterpart are never dropped silently: ``SAM3_ONLY`` names them with the reason,
and each conversion returns them (``Converted.left_out``) and keeps their values
(``Converted.kept``), so that sam3 -> transformers -> sam3 gives back every tensor exactly.
transformers -> sam3 -> transformers is exact too: every transformers tensor has a counterpart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from sam3_lora.core.errors import UserError
from sam3_lora.sam3_compat import module_paths as paths

COPY, PACKED_QKV, TRANSPOSE, CLS_POSITION = "copy", "packed_qkv", "transpose", "cls_position"
QKV_ROLES = ("q", "k", "v")

# Where a part of the model lives on each side.
VIT, HF_VIT = f"{paths.TRUNK}.", "vision_encoder.backbone."
NECK, HF_NECK = "backbone.vision_backbone.convs.", "vision_encoder.neck.fpn_layers."
TEXT, HF_TEXT = f"{paths.TEXT_BACKBONE}.", "text_encoder.text_model."
GEOMETRY = "geometry_encoder."
ENCODER, HF_ENCODER = "transformer.encoder.layers.{n}.", "detr_encoder.layers.{n}."
DECODER, HF_DECODER = "transformer.decoder.", "detr_decoder."
SEGMENTATION, HF_MASK = "segmentation_head.", "mask_decoder."
SCORING, HF_SCORING = "dot_prod_scoring.", "dot_product_scoring."


class KeyMapError(UserError, ValueError):
    """Weights that the key map cannot place: unknown names, incomplete packed groups, bad shapes."""


@dataclass(frozen=True)
class Rule:
    sam3: str
    transformers: str
    kind: str = COPY


def _linear(sam3: str, hf: str) -> List[Rule]:
    return [Rule(f"{sam3}.{{p}}", f"{hf}.{{p}}")]


def _attention(sam3: str, hf: str, out: str = "o_proj") -> List[Rule]:
    """An ``nn.MultiheadAttention`` (packed q/k/v) and transformers' separate projections."""
    return [
        Rule(f"{sam3}.in_proj_{{p}}", f"{hf}.{{qkv}}_proj.{{p}}", PACKED_QKV),
        *_linear(f"{sam3}.out_proj", f"{hf}.{out}"),
    ]


def _mlp(sam3: str, hf: str) -> List[Rule]:
    """sam3's ``MLP`` (``layers.0, layers.1, ...``) and transformers' ``Sam3DecoderMLP`` (``layer1, layer2, ...``)."""
    return [Rule(f"{sam3}.layers.{{i}}.{{p}}", f"{hf}.layer{{i1}}.{{p}}")]


def _encoder_layer(sam3: str, hf: str) -> List[Rule]:
    """sam3's ``TransformerEncoderLayer`` (pre-norm) and transformers' geometry / DETR encoder layer."""
    return [
        *_attention(f"{sam3}self_attn", f"{hf}self_attn"),
        *_attention(f"{sam3}cross_attn_image", f"{hf}cross_attn"),
        *_linear(f"{sam3}linear1", f"{hf}mlp.fc1"),
        *_linear(f"{sam3}linear2", f"{hf}mlp.fc2"),
        *(rule for k in (1, 2, 3) for rule in _linear(f"{sam3}norm{k}", f"{hf}layer_norm{k}")),
    ]


RULES: Tuple[Rule, ...] = (
    # ViT trunk (RoPE, windowed + global attention).
    Rule(f"{VIT}pos_embed", f"{HF_VIT}embeddings.position_embeddings", CLS_POSITION),
    *_linear(f"{VIT}patch_embed.proj", f"{HF_VIT}embeddings.patch_embeddings.projection"),
    *_linear(f"{VIT}ln_pre", f"{HF_VIT}layer_norm"),
    *_linear(f"{VIT}blocks.{{n}}.norm1", f"{HF_VIT}layers.{{n}}.layer_norm1"),
    *_linear(f"{VIT}blocks.{{n}}.norm2", f"{HF_VIT}layers.{{n}}.layer_norm2"),
    Rule(f"{VIT}blocks.{{n}}.attn.qkv.{{p}}", f"{HF_VIT}layers.{{n}}.attention.{{qkv}}_proj.{{p}}", PACKED_QKV),
    *_linear(f"{VIT}blocks.{{n}}.attn.proj", f"{HF_VIT}layers.{{n}}.attention.o_proj"),
    *_linear(f"{VIT}blocks.{{n}}.mlp.fc1", f"{HF_VIT}layers.{{n}}.mlp.fc1"),
    *_linear(f"{VIT}blocks.{{n}}.mlp.fc2", f"{HF_VIT}layers.{{n}}.mlp.fc2"),
    # The simple-FPN neck: scale factors (4, 2, 1, 0.5) in both, so the up-sampling convolutions sit
    # at fixed levels (level 0: two transposed convolutions around a GELU; level 1: one).
    *_linear(f"{NECK}0.dconv_2x2_0", f"{HF_NECK}0.scale_layers.0"),
    *_linear(f"{NECK}0.dconv_2x2_1", f"{HF_NECK}0.scale_layers.2"),
    *_linear(f"{NECK}1.dconv_2x2", f"{HF_NECK}1.scale_layers.0"),
    *_linear(f"{NECK}{{n}}.conv_1x1", f"{HF_NECK}{{n}}.proj1"),
    *_linear(f"{NECK}{{n}}.conv_3x3", f"{HF_NECK}{{n}}.proj2"),
    # The text encoder: sam3's CLIP-style TextTransformer is transformers' CLIPTextModelWithProjection;
    # sam3's `resizer` (text width -> d_model) is Sam3Model's own `text_projection`.
    Rule(f"{TEXT}encoder.token_embedding.weight", f"{HF_TEXT}embeddings.token_embedding.weight"),
    Rule(f"{TEXT}encoder.positional_embedding", f"{HF_TEXT}embeddings.position_embedding.weight"),
    *_attention(
        f"{TEXT}encoder.transformer.resblocks.{{n}}.attn", f"{HF_TEXT}encoder.layers.{{n}}.self_attn", out="out_proj"
    ),
    *_linear(f"{TEXT}encoder.transformer.resblocks.{{n}}.ln_1", f"{HF_TEXT}encoder.layers.{{n}}.layer_norm1"),
    *_linear(f"{TEXT}encoder.transformer.resblocks.{{n}}.ln_2", f"{HF_TEXT}encoder.layers.{{n}}.layer_norm2"),
    *_linear(f"{TEXT}encoder.transformer.resblocks.{{n}}.mlp.c_fc", f"{HF_TEXT}encoder.layers.{{n}}.mlp.fc1"),
    *_linear(f"{TEXT}encoder.transformer.resblocks.{{n}}.mlp.c_proj", f"{HF_TEXT}encoder.layers.{{n}}.mlp.fc2"),
    *_linear(f"{TEXT}encoder.ln_final", f"{HF_TEXT}final_layer_norm"),
    Rule(f"{TEXT}encoder.text_projection", "text_encoder.text_projection.weight", TRANSPOSE),
    *_linear(f"{TEXT}resizer", "text_projection"),
    # The geometry (box prompt) encoder.
    *(
        rule
        for name in ("label_embed", "cls_embed", "boxes_direct_project", "boxes_pool_project", "boxes_pos_enc_project")
        for rule in _linear(f"{GEOMETRY}{name}", f"{GEOMETRY}{name}")
    ),
    *_linear(f"{GEOMETRY}final_proj", f"{GEOMETRY}final_proj"),
    *_linear(f"{GEOMETRY}norm", f"{GEOMETRY}prompt_layer_norm"),
    *_linear(f"{GEOMETRY}img_pre_norm", f"{GEOMETRY}vision_layer_norm"),
    *_encoder_layer(f"{GEOMETRY}encode.{{n}}.", f"{GEOMETRY}layers.{{n}}."),
    *_linear(f"{GEOMETRY}encode_norm", f"{GEOMETRY}output_layer_norm"),
    # The DETR encoder (image features attend to the prompt).
    *_encoder_layer(ENCODER, HF_ENCODER),
    # The DETR decoder (queries, presence token, box refinement, box relative-position bias).
    *_attention(f"{DECODER}layers.{{n}}.self_attn", f"{HF_DECODER}layers.{{n}}.self_attn"),
    *_linear(f"{DECODER}layers.{{n}}.norm2", f"{HF_DECODER}layers.{{n}}.self_attn_layer_norm"),
    *_attention(f"{DECODER}layers.{{n}}.ca_text", f"{HF_DECODER}layers.{{n}}.text_cross_attn"),
    *_linear(f"{DECODER}layers.{{n}}.catext_norm", f"{HF_DECODER}layers.{{n}}.text_cross_attn_layer_norm"),
    *_attention(f"{DECODER}layers.{{n}}.cross_attn", f"{HF_DECODER}layers.{{n}}.vision_cross_attn"),
    *_linear(f"{DECODER}layers.{{n}}.norm1", f"{HF_DECODER}layers.{{n}}.vision_cross_attn_layer_norm"),
    *_linear(f"{DECODER}layers.{{n}}.linear1", f"{HF_DECODER}layers.{{n}}.mlp.fc1"),
    *_linear(f"{DECODER}layers.{{n}}.linear2", f"{HF_DECODER}layers.{{n}}.mlp.fc2"),
    *_linear(f"{DECODER}layers.{{n}}.norm3", f"{HF_DECODER}layers.{{n}}.mlp_layer_norm"),
    *_linear(f"{DECODER}norm", f"{HF_DECODER}output_layer_norm"),
    *_mlp(f"{DECODER}bbox_embed", f"{HF_DECODER}box_head"),
    *(
        rule
        for name in ("query_embed", "reference_points", "presence_token")
        for rule in _linear(f"{DECODER}{name}", f"{HF_DECODER}{name}")
    ),
    *_mlp(f"{DECODER}presence_token_head", f"{HF_DECODER}presence_head"),
    *_linear(f"{DECODER}presence_token_out_norm", f"{HF_DECODER}presence_layer_norm"),
    *_mlp(f"{DECODER}ref_point_head", f"{HF_DECODER}ref_point_head"),
    *_mlp(f"{DECODER}boxRPB_embed_x", f"{HF_DECODER}box_rpb_embed_x"),
    *_mlp(f"{DECODER}boxRPB_embed_y", f"{HF_DECODER}box_rpb_embed_y"),
    # The segmentation head (transformers' mask decoder).
    *_linear(f"{SEGMENTATION}pixel_decoder.conv_layers.{{n}}", f"{HF_MASK}pixel_decoder.conv_layers.{{n}}"),
    *_linear(f"{SEGMENTATION}pixel_decoder.norms.{{n}}", f"{HF_MASK}pixel_decoder.norms.{{n}}"),
    *_linear(f"{SEGMENTATION}mask_predictor.mask_embed.layers.{{n}}", f"{HF_MASK}mask_embedder.layers.{{n}}"),
    *_attention(f"{SEGMENTATION}cross_attend_prompt", f"{HF_MASK}prompt_cross_attn"),
    *_linear(f"{SEGMENTATION}cross_attn_norm", f"{HF_MASK}prompt_cross_attn_norm"),
    *_linear(f"{SEGMENTATION}semantic_seg_head", f"{HF_MASK}semantic_projection"),
    *_linear(f"{SEGMENTATION}instance_seg_head", f"{HF_MASK}instance_projection"),
    # Dot-product scoring of queries against the pooled prompt.
    *_mlp(f"{SCORING}prompt_mlp", f"{HF_SCORING}text_mlp"),
    *_linear(f"{SCORING}prompt_mlp.out_norm", f"{HF_SCORING}text_mlp_out_norm"),
    *_linear(f"{SCORING}prompt_proj", f"{HF_SCORING}text_proj"),
    *_linear(f"{SCORING}hs_proj", f"{HF_SCORING}query_proj"),
)

# sam3 tensors with no transformers counterpart, and why. The first is a buffer the model computes.
DERIVED = f"{VIT}blocks.{{n}}.attn.freqs_cis"
SAM3_ONLY: Tuple[Tuple[str, str], ...] = (
    (DERIVED, "RoPE frequencies: a buffer sam3 computes from the architecture (transformers recomputes its own)"),
    (
        f"{GEOMETRY}points_direct_project.{{p}}",
        "point-prompt encoder: transformers' Sam3Model takes box prompts only",
    ),
    (f"{GEOMETRY}points_pool_project.{{p}}", "point-prompt encoder: transformers' Sam3Model takes box prompts only"),
    (f"{GEOMETRY}points_pos_enc_project.{{p}}", "point-prompt encoder: transformers' Sam3Model takes box prompts only"),
)
CLS_ROW_REASON = (
    "the ViT position table's class-token row: sam3 discards it (retain_cls_token=False), transformers has no such row"
)


def cls_row_name(name: str) -> str:
    """How the left-out class-token row of a position table is named."""
    return f"{name}[cls row]"


_FIELDS = {
    "n": r"(?P<n>\d+)",
    "i": r"(?P<i>\d+)",
    "i1": r"(?P<i1>\d+)",
    "p": r"(?P<p>weight|bias)",
    "qkv": r"(?P<qkv>[qkv])",
}


def _regex(pattern: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", pattern)
    return re.compile("".join(_FIELDS[p] if i % 2 else re.escape(p) for i, p in enumerate(parts)) + r"\Z")


def _fill(pattern: str, fields: Mapping[str, str]) -> str:
    values = dict(fields)
    if "i" in values:
        values["i1"] = str(int(values["i"]) + 1)
    elif "i1" in values:
        values["i"] = str(int(values["i1"]) - 1)
    return pattern.format(**values)


_SAM3_REGEX = [(rule, _regex(rule.sam3)) for rule in RULES]
_HF_REGEX = [(rule, _regex(rule.transformers)) for rule in RULES]
_SAM3_ONLY_REGEX = [(_regex(pattern), reason) for pattern, reason in SAM3_ONLY]
_DERIVED_REGEX = _regex(DERIVED)


def _only_match(name: str, table) -> Optional[Tuple[Rule, Dict[str, str]]]:
    hits = [(rule, m.groupdict()) for rule, rx in table if (m := rx.match(name))]
    if len(hits) > 1:  # the table is meant to be unambiguous; tests/test_hf_interop.py checks it on real models
        raise RuntimeError(f"key map: {name} matches {len(hits)} rules: {[r for r, _ in hits]}")
    return hits[0] if hits else None


def is_derived(name: str) -> bool:
    """A sam3 buffer computed from the architecture (no weights to carry)."""
    return _DERIVED_REGEX.match(name) is not None


def sam3_only_reason(name: str) -> Optional[str]:
    """Why a sam3 tensor has no transformers counterpart (None: it has one)."""
    return next((reason for rx, reason in _SAM3_ONLY_REGEX if rx.match(name)), None)


@dataclass
class Converted:
    """The result of a conversion."""

    #: the tensors in the target layout
    tensors: Dict[str, Tensor] = field(default_factory=dict)
    #: source names (or parts) with no counterpart -> why
    left_out: Dict[str, str] = field(default_factory=dict)
    #: the left-out values themselves, so a conversion back can restore them exactly
    kept: Dict[str, Tensor] = field(default_factory=dict)
    #: target names (or parts) the source did not determine -> what was put there
    filled: Dict[str, str] = field(default_factory=dict)


def counterparts(sam3_name: str, rows: int) -> List[Tuple[str, slice]]:
    """The transformers tensors a sam3 weight of ``rows`` rows becomes, each with the rows of the
    sam3 weight it holds (a packed ``[q; k; v]`` weight: three, one third each).

    Raises KeyMapError for a name with no counterpart (see ``sam3_only_reason``) or no rule.
    """
    hit = _only_match(sam3_name, _SAM3_REGEX)
    if hit is None:
        reason = sam3_only_reason(sam3_name)
        raise KeyMapError(
            f"{sam3_name} has no counterpart in transformers' Sam3Model"
            + (f" ({reason})" if reason else ": no rule in sam3_lora/models/transformers_keymap.py covers it")
        )
    rule, fields = hit
    if rule.kind == PACKED_QKV:
        d = rows // 3
        return [
            (_fill(rule.transformers, {**fields, "qkv": r}), slice(i * d, (i + 1) * d)) for i, r in enumerate(QKV_ROLES)
        ]
    if rule.kind != COPY:
        raise KeyMapError(f"{sam3_name} is not a Linear weight; its transformers counterpart is not row-for-row")
    return [(_fill(rule.transformers, fields), slice(0, rows))]


def to_transformers(sam3_state: Mapping[str, Tensor]) -> Converted:
    """sam3 layout -> transformers layout. Unknown names stop the conversion, naming them."""
    out = Converted()
    unknown = []
    for name, tensor in sam3_state.items():
        hit = _only_match(name, _SAM3_REGEX)
        if hit is None:
            reason = sam3_only_reason(name)
            if reason is None:
                unknown.append(name)
            else:
                out.left_out[name], out.kept[name] = reason, tensor
            continue
        rule, fields = hit
        if rule.kind == PACKED_QKV:
            if tensor.shape[0] % 3:
                raise KeyMapError(f"{name}: {tuple(tensor.shape)} does not split into q, k and v rows")
            for role, part in zip(QKV_ROLES, tensor.chunk(3, dim=0)):
                out.tensors[_fill(rule.transformers, {**fields, "qkv": role})] = part
        elif rule.kind == TRANSPOSE:
            out.tensors[_fill(rule.transformers, fields)] = tensor.t()
        elif rule.kind == CLS_POSITION:
            out.tensors[_fill(rule.transformers, fields)] = tensor[:, 1:]
            out.left_out[cls_row_name(name)], out.kept[cls_row_name(name)] = CLS_ROW_REASON, tensor[:, :1]
        else:
            out.tensors[_fill(rule.transformers, fields)] = tensor
    if unknown:
        raise KeyMapError(
            f"{len(unknown)} tensor(s) of the sam3 model have no rule in the key map: {unknown[:6]}"
            f"{' ...' if len(unknown) > 6 else ''}. The model is not the SAM3 image model this map was written for."
        )
    return out


def to_sam3(hf_state: Mapping[str, Tensor], kept: Optional[Mapping[str, Tensor]] = None) -> Converted:
    """transformers layout -> sam3 layout. ``kept``: the values ``to_transformers`` left out, to
    restore them exactly; without it the class-token row of the position table is zero (sam3 never
    reads it) and the sam3-only tensors are absent (a model keeps its own)."""
    kept = dict(kept or {})
    out = Converted()
    packed: Dict[str, Dict[str, Tensor]] = {}
    unknown = []
    for name, tensor in hf_state.items():
        hit = _only_match(name, _HF_REGEX)
        if hit is None:
            unknown.append(name)
            continue
        rule, fields = hit
        target = _fill(rule.sam3, fields)
        if rule.kind == PACKED_QKV:
            packed.setdefault(target, {})[fields["qkv"]] = tensor
        elif rule.kind == TRANSPOSE:
            out.tensors[target] = tensor.t()
        elif rule.kind == CLS_POSITION:
            row = kept.pop(cls_row_name(target), None)
            if row is None:
                row = tensor.new_zeros(tensor.shape[0], 1, tensor.shape[2])
                out.filled[cls_row_name(target)] = "zeros (" + CLS_ROW_REASON + ")"
            out.tensors[target] = torch.cat([row.to(tensor.dtype), tensor], dim=1)
        else:
            out.tensors[target] = tensor
    if unknown:
        raise KeyMapError(
            f"{len(unknown)} tensor(s) are not part of transformers' Sam3Model as this key map knows it: "
            f"{unknown[:6]}{' ...' if len(unknown) > 6 else ''}"
        )
    for target, roles in packed.items():
        missing = [r for r in QKV_ROLES if r not in roles]
        if missing:
            raise KeyMapError(f"{target} needs q, k and v projections; the transformers weights lack {missing}")
        out.tensors[target] = torch.cat([roles[r] for r in QKV_ROLES], dim=0)
    for name, tensor in kept.items():  # sam3-only tensors carried through a round trip
        out.tensors[name] = tensor
    return out


def no_counterpart(sam3_names: Sequence[str]) -> Dict[str, str]:
    """The names among ``sam3_names`` that transformers' Sam3Model has no counterpart for, with why."""
    return {n: r for n in sam3_names if (r := sam3_only_reason(n)) is not None}


def summarise(notes: Mapping[str, str], limit: int = 3) -> List[str]:
    """Tensors left out (name -> why), one line per reason: ``why: N tensor(s) (a, b, ...)``."""
    by_reason: Dict[str, List[str]] = {}
    for name, reason in notes.items():
        by_reason.setdefault(reason, []).append(name)
    return [
        f"{reason}: {len(names)} tensor(s) ({', '.join(names[:limit])}{', ...' if len(names) > limit else ''})"
        for reason, names in by_reason.items()
    ]
