"""LoRA layers: a low-rank update, and the two kinds of module SAM3 needs it on.

* ``LoraLinear`` wraps an ``nn.Linear``. One update may cover the whole weight, or
  several may cover row slices of a packed weight (the ViT's fused ``qkv``).
* ``LoraMultiheadAttention`` wraps an ``nn.MultiheadAttention``: per-slice updates
  on the packed ``in_proj_weight`` (q, k, v) and one on ``out_proj``.

Updates are applied to activations (``x A^T B^T``), never by rebuilding the weight
on each forward: frozen weights then need no weight gradient, which is where
LoRA's saving comes from. ``merge()`` folds the updates into the base weights for
inference; ``unmerge()`` takes them out again.
"""

from __future__ import annotations

import math
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sam3_lora.lora.config import lora_scale

QKV = ("q", "k", "v")

# Private torch helpers that nn.MultiheadAttention's own forward uses to normalise masks (bool ->
# float -inf, dtype checks); used so our attention treats masks exactly as the stock module does.
# Named once here; tests/test_lora_layers.py fails loudly if a torch release changes them.
canonical_mask = F._canonical_mask
none_or_dtype = F._none_or_dtype


class LoraDelta(nn.Module):
    """One low-rank update ``ΔW = scale · B @ A`` of an ``out × in`` weight.

    Holds the parameters; the layers below apply it (``add_packed_delta``), batching the
    updates that share an input.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        use_rslora: bool = False,
    ):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        # nn.Linear's own init for A (as in the LoRA paper and PEFT); B = 0 so a fresh
        # adapter leaves the model's outputs unchanged.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scale = lora_scale(alpha, rank, use_rslora)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]

    def delta_weight(self) -> Tensor:
        return (self.lora_B @ self.lora_A) * self.scale


def add_packed_delta(out: Tensor, x: Tensor, parts: List[Tuple[int, int, LoraDelta]], factor: float = 1.0) -> Tensor:
    """``out`` plus ``factor`` times the updates of several row slices of one packed weight, each
    added to its own columns of ``out`` (the base projection of ``x``).

    The slices share their input, so their A matrices are applied in one matmul (and one
    dropout mask, as a single update over the packed weight would have). A single update
    over every column is added by one fused multiply-add.
    """
    deltas = [d for _, _, d in parts]
    first = deltas[0]
    A = first.lora_A if len(deltas) == 1 else torch.cat([d.lora_A for d in deltas])
    h = F.linear(first.dropout(x.to(A.dtype)), A)
    width = out.shape[-1]
    if len(parts) == 1 and parts[0][:2] == (0, width) and out.dtype == h.dtype:
        alpha = first.scale * factor
        flat = torch.addmm(out.reshape(-1, width), h.reshape(-1, first.rank), first.lora_B.t(), alpha=alpha)
        return flat.view(out.shape)
    pieces, cursor = [], 0
    for (start, stop, d), hi in zip(parts, h.split(first.rank, dim=-1)):
        if start > cursor:
            pieces.append(hi.new_zeros(*hi.shape[:-1], start - cursor))
        pieces.append(F.linear(hi, d.lora_B) * (d.scale * factor))
        cursor = stop
    if cursor < width:
        pieces.append(h.new_zeros(*h.shape[:-1], width - cursor))
    return out + (pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)).to(out.dtype)


class LoraLayer(nn.Module):
    """A base layer plus LoRA updates, each on rows of one of its weights.

    Subclasses name where each update goes (``_updated_rows``); merging and unmerging are
    the same for all: add or subtract ``adapter_scale · scale · B @ A`` on those rows, once.

    ``adapter_scale`` weighs the updates: 1 as trained, 0 the base layer exactly (the update is
    not computed at all), between them an interpolation towards the base (WiSE-FT, for LoRA).
    Set it through :func:`sam3_lora.lora.set_adapter_scale`, which re-merges a merged layer.
    """

    def __init__(self) -> None:
        super().__init__()
        self.merged = False
        self.adapter_scale = 1.0

    @property
    def active(self) -> bool:
        """Whether the forward adds the updates itself (unmerged, at a scale other than 0)."""
        return not self.merged and self.adapter_scale != 0

    def _updated_rows(self) -> Iterator[Tuple[Tensor, slice, LoraDelta]]:
        raise NotImplementedError

    def _add_updates(self, sign: float) -> None:  # (not _apply: nn.Module.to() uses that name)
        with torch.no_grad():
            for weight, rows, delta in self._updated_rows():
                weight[rows] += (sign * self.adapter_scale) * delta.delta_weight().to(weight.dtype)

    def merge(self) -> None:
        """Fold the updates into the base weights (inference at the base layer's speed)."""
        if not self.merged:
            self._add_updates(+1)
            self.merged = True

    def unmerge(self) -> None:
        """Take them out again (to train on, or save the adapter alone)."""
        if self.merged:
            self._add_updates(-1)
            self.merged = False


class LoraLinear(LoraLayer):
    """``nn.Linear`` plus LoRA updates, each on a row slice of its weight.

    ``slices`` maps an update's name to its rows: ``{"full": (0, out)}`` for a plain
    layer, ``{"q": (0, d), "v": (2d, 3d)}`` for q and v of a packed qkv projection.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        slices: Dict[str, Tuple[int, int]],
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        use_rslora: bool = False,
    ):
        super().__init__()
        self.base_layer = base_layer
        self.slices = dict(sorted(slices.items(), key=lambda kv: kv[1][0]))
        self.lora = nn.ModuleDict(
            {
                name: LoraDelta(base_layer.in_features, stop - start, rank, alpha, dropout, use_rslora)
                for name, (start, stop) in self.slices.items()
            }
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.base_layer(x)
        if not self.active:
            return out
        parts = [(start, stop, self.lora[name]) for name, (start, stop) in self.slices.items()]
        return add_packed_delta(out, x, parts, self.adapter_scale)

    def _updated_rows(self):
        for name, (start, stop) in self.slices.items():
            yield self.base_layer.weight, slice(start, stop), self.lora[name]

    def extra_repr(self) -> str:
        return f"slices={self.slices}, merged={self.merged}, adapter_scale={self.adapter_scale:g}"


def _map_keeping_identity(fn, query: Tensor, key: Tensor, value: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``fn`` on each input, with inputs that were the same tensor still the same tensor
    afterwards (so self-attention keeps its single packed projection)."""
    q = fn(query)
    k = q if key is query else fn(key)
    v = k if value is key else (q if value is query else fn(value))
    return q, k, v


def _forces_no_weights(mha: nn.MultiheadAttention) -> bool:
    # sam3's MultiheadAttentionWrapper overrides forward() to pass need_weights=False.
    from sam3.model.model_misc import MultiheadAttentionWrapper

    return isinstance(mha, MultiheadAttentionWrapper)


class LoraMultiheadAttention(LoraLayer):
    """``nn.MultiheadAttention`` with LoRA on q, k, v (row slices of ``in_proj_weight``)
    and on ``out_proj``.

    The stock module hands its weights straight to ``F.multi_head_attention_forward``,
    so a wrapped ``out_proj`` would never run. This module therefore runs the same
    steps itself — projections, mask canonicalisation, then the same attention
    kernel the stock module uses: ``F.scaled_dot_product_attention`` when no weights
    are asked for, the explicit path when they are — adding each update to the
    projection's output.
    """

    def __init__(
        self,
        base_layer: nn.MultiheadAttention,
        targets: Tuple[str, ...],
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        use_rslora: bool = False,
    ):
        super().__init__()
        if not base_layer._qkv_same_embed_dim or base_layer.in_proj_weight is None:
            raise ValueError("LoRA on nn.MultiheadAttention needs a packed in_proj_weight (kdim == vdim == embed_dim)")
        if base_layer.bias_k is not None or base_layer.add_zero_attn:
            raise ValueError("LoRA on nn.MultiheadAttention does not support add_bias_kv or add_zero_attn")
        unknown = set(targets) - {*QKV, "out"}
        if unknown or not targets:
            raise ValueError(f"attention targets must be a non-empty subset of q, k, v, out; got {sorted(targets)}")
        self.base_layer = base_layer
        e = base_layer.embed_dim
        self.lora = nn.ModuleDict(
            {t: LoraDelta(e, e, rank, alpha, dropout, use_rslora) for t in ("q", "k", "v", "out") if t in targets}
        )
        self.need_weights_forced_off = _forces_no_weights(base_layer)

    # -- attributes sam3 code reads on its attention modules (num_heads, batch_first, ...)
    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.base_layer, name)

    def _slice_rows(self, name: str) -> slice:
        e = self.base_layer.embed_dim
        i = QKV.index(name)
        return slice(i * e, (i + 1) * e)

    def _updated_rows(self):
        for name, delta in self.lora.items():
            if name == "out":
                yield self.base_layer.out_proj.weight, slice(None), delta
            else:
                yield self.base_layer.in_proj_weight, self._slice_rows(name), delta

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """q, k and v, each input projected once: like the stock module, roles that share an
        input tensor (self-attention) share one matmul over their rows of ``in_proj_weight``."""
        mha, e = self.base_layer, self.base_layer.embed_dim
        inputs = {"q": query, "k": key, "v": value}
        groups: List[List[str]] = []
        for role in QKV:  # consecutive roles with the same input tensor form one group
            if groups and inputs[groups[-1][-1]] is inputs[role]:
                groups[-1].append(role)
            else:
                groups.append([role])
        out: Dict[str, Tensor] = {}
        for roles in groups:
            x = inputs[roles[0]]
            rows = slice(QKV.index(roles[0]) * e, (QKV.index(roles[-1]) + 1) * e)
            bias = mha.in_proj_bias[rows] if mha.in_proj_bias is not None else None
            y = F.linear(x, mha.in_proj_weight[rows], bias)
            parts = [(i * e, (i + 1) * e, self.lora[r]) for i, r in enumerate(roles) if r in self.lora]
            if parts:
                y = add_packed_delta(y, x, parts, self.adapter_scale)
            out.update(zip(roles, y.split(e, dim=-1)))
        return out["q"], out["k"], out["v"]

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        need_weights: bool = True,
        attn_mask: Optional[Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        mha = self.base_layer
        if not self.active:  # merged, or at scale 0: the stock module is the whole layer
            return mha(
                query,
                key,
                value,
                key_padding_mask=key_padding_mask,
                need_weights=need_weights,
                attn_mask=attn_mask,
                average_attn_weights=average_attn_weights,
                is_causal=is_causal,
            )
        need_weights = need_weights and not self.need_weights_forced_off
        batched = query.dim() == 3
        if mha.batch_first and batched:
            query, key, value = _map_keeping_identity(lambda t: t.transpose(0, 1), query, key, value)
        if not batched:
            query, key, value = _map_keeping_identity(lambda t: t.unsqueeze(1), query, key, value)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)

        tgt_len, bsz, embed_dim = query.shape
        heads, head_dim = mha.num_heads, mha.head_dim
        key_padding_mask = canonical_mask(
            mask=key_padding_mask,
            mask_name="key_padding_mask",
            other_type=none_or_dtype(attn_mask),
            other_name="attn_mask",
            target_type=query.dtype,
        )
        attn_mask = canonical_mask(
            mask=attn_mask,
            mask_name="attn_mask",
            other_type=None,
            other_name="",
            target_type=query.dtype,
            check_other=False,
        )
        if key_padding_mask is not None:
            is_causal = False

        q, k, v = self._project(query, key, value)
        src_len = k.shape[0]
        q = q.reshape(tgt_len, bsz * heads, head_dim).transpose(0, 1)
        k = k.reshape(src_len, bsz * heads, head_dim).transpose(0, 1)
        v = v.reshape(src_len, bsz * heads, head_dim).transpose(0, 1)

        if attn_mask is not None and attn_mask.dim() == 2:
            attn_mask = attn_mask.unsqueeze(0)
        if key_padding_mask is not None:
            kpm = key_padding_mask.view(bsz, 1, 1, src_len).expand(-1, heads, -1, -1)
            kpm = kpm.reshape(bsz * heads, 1, src_len)
            attn_mask = kpm if attn_mask is None else attn_mask + kpm
        dropout_p = mha.dropout if self.training else 0.0

        weights = None
        if need_weights:
            # The stock module's explicit path: the caller asked for the attention map.
            scores = torch.bmm(q * head_dim**-0.5, k.transpose(-2, -1))
            if attn_mask is not None:
                scores = scores + attn_mask
            weights = scores.softmax(dim=-1)
            if dropout_p > 0:
                weights = F.dropout(weights, p=dropout_p)
            out = torch.bmm(weights, v)
            out = out.transpose(0, 1).reshape(tgt_len * bsz, embed_dim)
            weights = weights.view(bsz, heads, tgt_len, src_len)
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if not batched:
                weights = weights.squeeze(0)
        else:
            if attn_mask is not None:
                if attn_mask.size(0) == 1:
                    attn_mask = attn_mask.unsqueeze(0)
                else:
                    attn_mask = attn_mask.view(bsz, heads, -1, src_len)
            out = F.scaled_dot_product_attention(
                q.view(bsz, heads, tgt_len, head_dim),
                k.view(bsz, heads, src_len, head_dim),
                v.view(bsz, heads, src_len, head_dim),
                attn_mask,
                dropout_p,
                is_causal and attn_mask is None,
            )
            out = out.permute(2, 0, 1, 3).reshape(bsz * tgt_len, embed_dim)

        proj = mha.out_proj
        y = F.linear(out, proj.weight, proj.bias)
        if "out" in self.lora:
            y = add_packed_delta(y, out, [(0, embed_dim, self.lora["out"])], self.adapter_scale)
        y = y.view(tgt_len, bsz, embed_dim)
        if not batched:
            y = y.squeeze(1)
        elif mha.batch_first:
            y = y.transpose(0, 1)
        return y, weights

    def extra_repr(self) -> str:
        return f"targets={tuple(self.lora.keys())}, merged={self.merged}, adapter_scale={self.adapter_scale:g}"
