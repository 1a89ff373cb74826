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
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

QKV = ("q", "k", "v")


class LoraDelta(nn.Module):
    """One low-rank update ``ΔW = scale · B @ A`` of an ``out × in`` weight."""

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
        self.scale = alpha / (math.sqrt(rank) if use_rslora else rank)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        h = F.linear(self.dropout(x.to(self.lora_A.dtype)), self.lora_A)
        return (F.linear(h, self.lora_B) * self.scale).to(x.dtype)

    def delta_weight(self) -> Tensor:
        return (self.lora_B @ self.lora_A) * self.scale


def _add_to_weight(weight: Tensor, rows: slice, delta: LoraDelta, sign: float) -> None:
    with torch.no_grad():
        weight[rows] += sign * delta.delta_weight().to(weight.dtype)


class LoraLinear(nn.Module):
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
                name: LoraDelta(
                    base_layer.in_features, stop - start, rank, alpha, dropout, use_rslora
                )
                for name, (start, stop) in self.slices.items()
            }
        )
        self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        return out + self._packed_delta(x, out.shape[-1])

    def _packed_delta(self, x: Tensor, out_features: int) -> Tensor:
        """The updates of all slices laid side by side, zeros where no slice is adapted."""
        pieces, cursor = [], 0
        for name, (start, stop) in self.slices.items():
            delta = self.lora[name](x)
            if start > cursor:
                pieces.append(delta.new_zeros(*delta.shape[:-1], start - cursor))
            pieces.append(delta)
            cursor = stop
        if cursor < out_features:
            pieces.append(pieces[-1].new_zeros(*pieces[-1].shape[:-1], out_features - cursor))
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)

    def merge(self) -> None:
        if not self.merged:
            for name, (start, stop) in self.slices.items():
                _add_to_weight(self.base_layer.weight, slice(start, stop), self.lora[name], +1)
            self.merged = True

    def unmerge(self) -> None:
        if self.merged:
            for name, (start, stop) in self.slices.items():
                _add_to_weight(self.base_layer.weight, slice(start, stop), self.lora[name], -1)
            self.merged = False

    def extra_repr(self) -> str:
        return f"slices={self.slices}, merged={self.merged}"


def _forces_no_weights(mha: nn.MultiheadAttention) -> bool:
    # sam3's MultiheadAttentionWrapper overrides forward() to pass need_weights=False.
    from sam3.model.model_misc import MultiheadAttentionWrapper

    return isinstance(mha, MultiheadAttentionWrapper)


class LoraMultiheadAttention(nn.Module):
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
        self.merged = False

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

    def merge(self) -> None:
        if self.merged:
            return
        for name, delta in self.lora.items():
            if name == "out":
                _add_to_weight(self.base_layer.out_proj.weight, slice(None), delta, +1)
            else:
                _add_to_weight(self.base_layer.in_proj_weight, self._slice_rows(name), delta, +1)
        self.merged = True

    def unmerge(self) -> None:
        if not self.merged:
            return
        for name, delta in self.lora.items():
            if name == "out":
                _add_to_weight(self.base_layer.out_proj.weight, slice(None), delta, -1)
            else:
                _add_to_weight(self.base_layer.in_proj_weight, self._slice_rows(name), delta, -1)
        self.merged = False

    def _project(self, x: Tensor, name: str) -> Tensor:
        mha = self.base_layer
        rows = self._slice_rows(name)
        bias = mha.in_proj_bias[rows] if mha.in_proj_bias is not None else None
        y = F.linear(x, mha.in_proj_weight[rows], bias)
        return y + self.lora[name](x) if name in self.lora else y

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
        if self.merged:
            return mha(
                query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal,
            )
        need_weights = need_weights and not self.need_weights_forced_off
        batched = query.dim() == 3
        if mha.batch_first and batched:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        if not batched:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)

        tgt_len, bsz, embed_dim = query.shape
        heads, head_dim = mha.num_heads, mha.head_dim
        key_padding_mask = F._canonical_mask(
            mask=key_padding_mask, mask_name="key_padding_mask",
            other_type=F._none_or_dtype(attn_mask), other_name="attn_mask", target_type=query.dtype,
        )
        attn_mask = F._canonical_mask(
            mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="",
            target_type=query.dtype, check_other=False,
        )
        if key_padding_mask is not None:
            is_causal = False

        q = self._project(query, "q")
        k = self._project(key, "k")
        v = self._project(value, "v")
        src_len = k.shape[0]
        q = q.view(tgt_len, bsz * heads, head_dim).transpose(0, 1)
        k = k.view(src_len, bsz * heads, head_dim).transpose(0, 1)
        v = v.view(src_len, bsz * heads, head_dim).transpose(0, 1)

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
                attn_mask, dropout_p, is_causal and attn_mask is None,
            )
            out = out.permute(2, 0, 1, 3).reshape(bsz * tgt_len, embed_dim)

        proj = mha.out_proj
        y = F.linear(out, proj.weight, proj.bias)
        if "out" in self.lora:
            y = y + self.lora["out"](out)
        y = y.view(tgt_len, bsz, embed_dim)
        if not batched:
            y = y.squeeze(1)
        elif mha.batch_first:
            y = y.transpose(0, 1)
        return y, weights

    def extra_repr(self) -> str:
        return f"targets={tuple(self.lora.keys())}, merged={self.merged}"
