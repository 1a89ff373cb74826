"""Text-encoder outputs reused per prompt while the text encoder is frozen.

sam3 encodes every prompt of a batch at every step (its collator lists the batch's category
names); with the text encoder frozen — LoRA presets without the ``text`` part, evaluation,
prediction — the same names give the same outputs every time. ``install_text_cache`` puts a
:class:`TextEncodingCache` in front of the model's ``VETextEncoder``: each prompt's outputs
are kept, keyed by its token ids (and the device, autocast state and text-encoder adapter scales
they were computed under), and a batch is assembled from them; only prompts not seen before are
encoded.

The cache steps aside — the stock forward runs — whenever any text-encoder parameter
requires a gradient (its weights may change), for pre-encoded text or box inputs, and when
it is removed. A cached prompt's outputs are those the encoder gives for it in a batch of
new prompts; matrix kernels can round a row differently in a batch of another size
(measured on CPU: equal on the tiny model, within 1.2e-6 on the medium one with 2 threads).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Hashable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from sam3_lora.sam3_compat.module_paths import text_backbone_of
from sam3_lora.speed.forward_wrapper import unwrap_forward, wrap_forward

Entry = Tuple[Tensor, Tensor, Tensor]  # (padding-mask row, memory column, embeddings column)


class TextEncodingCache:
    """Callable standing in for ``VETextEncoder.forward``; see the module docstring."""

    def __init__(self, encoder: nn.Module, max_prompts: int = 4096):
        self.encoder = encoder
        self.stock_forward = encoder.forward  # the bound stock method
        self.max_prompts = max_prompts
        self.entries: "OrderedDict[Hashable, Entry]" = OrderedDict()
        self.hits = 0
        self.misses = 0

    def active(self) -> bool:
        """Only while no text-encoder weight can change."""
        return not any(p.requires_grad for p in self.encoder.parameters())

    def __call__(self, text, input_boxes: Optional[List] = None, device: torch.device = None):
        plain_prompts = isinstance(text, (list, tuple)) and len(text) > 0 and isinstance(text[0], str)
        if not plain_prompts or input_boxes or not self.active():
            return self.stock_forward(text, input_boxes, device=device)
        tokens = self.encoder.tokenizer(list(text), context_length=self.encoder.context_length)
        state = (_numeric_state(device), _adapter_state(self.encoder))
        keys = [(tuple(row.tolist()), state) for row in tokens]
        missing = list(OrderedDict.fromkeys(i for i, k in enumerate(keys) if k not in self.entries))
        new = {}
        if missing:
            mask, memory, embeds = self.stock_forward([text[i] for i in missing], None, device=device)
            for j, i in enumerate(missing):
                new[keys[i]] = (mask[j].detach(), memory[:, j].detach(), embeds[:, j].detach())
        self.misses += len(new)
        self.hits += len(keys) - len(new)
        entries = [new.get(k) or self.entries[k] for k in keys]
        for k in keys:  # most recently used last
            if k in self.entries:
                self.entries.move_to_end(k)
        self.entries.update(new)
        while len(self.entries) > self.max_prompts:
            self.entries.popitem(last=False)
        return (
            torch.stack([e[0] for e in entries]),
            torch.stack([e[1] for e in entries], dim=1),
            torch.stack([e[2] for e in entries], dim=1),
        )


def _numeric_state(device) -> Hashable:
    """What the outputs' values depend on besides the tokens: the device and autocast."""
    kind = torch.device(device).type if device is not None else "cpu"
    if torch.is_autocast_enabled(kind):
        return str(device), torch.get_autocast_dtype(kind)
    return str(device), None


def _adapter_state(encoder: nn.Module) -> Hashable:
    """The scales of any LoRA layers in the text encoder (``adapter_scale``): switching adapters off
    or scaling them changes the outputs, so it is part of the key."""
    return tuple(m.adapter_scale for m in encoder.modules() if hasattr(m, "adapter_scale"))


def install_text_cache(model: nn.Module, max_prompts: int = 4096) -> TextEncodingCache:
    """Put a cache in front of the model's text encoder (idempotent) and return it."""
    encoder = text_backbone_of(model)
    return wrap_forward(encoder, TextEncodingCache, lambda: TextEncodingCache(encoder, max_prompts))


def installed_text_cache(model: nn.Module) -> Optional[TextEncodingCache]:
    current = text_backbone_of(model).__dict__.get("forward")
    return current if isinstance(current, TextEncodingCache) else None


def text_cache_entries(model: nn.Module) -> List[dict]:
    """The cached prompts' outputs as plain values (a checkpoint keeps them): a resumed run answers
    each prompt with the very outputs the run it continues had cached, since a prompt encoded in
    another batch can round differently (module docstring)."""
    cache = installed_text_cache(model)
    if cache is None:
        return []
    out = []
    for (tokens, ((device, dtype), scales)), (mask, memory, embeds) in cache.entries.items():
        dtype_name = str(dtype).removeprefix("torch.") if dtype is not None else None
        out.append(
            {"tokens": list(tokens), "device": device, "dtype": dtype_name, "scales": list(scales),
             "mask": mask.cpu(), "memory": memory.cpu(), "embeds": embeds.cpu()}
        )  # fmt: skip
    return out


def restore_text_cache_entries(model: nn.Module, entries: List[dict]) -> None:
    """Put a checkpoint's cached outputs back (when this run caches text too)."""
    cache = installed_text_cache(model)
    if cache is None or not entries:
        return
    for e in entries:
        dtype = getattr(torch, e["dtype"]) if e["dtype"] else None
        key = (tuple(e["tokens"]), ((e["device"], dtype), tuple(e["scales"])))
        device = torch.device(e["device"]) if e["device"] != "None" else None
        cache.entries[key] = tuple(t.to(device) if device is not None else t for t in (e["mask"], e["memory"], e["embeds"]))


def remove_text_cache(model: nn.Module) -> None:
    unwrap_forward(text_backbone_of(model), TextEncodingCache)
