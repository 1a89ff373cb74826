"""``python -m sam3_lora.describe ADAPTER``: what an adapter file is, without loading a model.

Prints its LoRA config, adapted modules, parameter count and size, the base model it
was trained on (name and architecture fingerprint) and the versions that wrote it.
"""

from __future__ import annotations

import sys
from collections import Counter

from sam3_lora.core.errors import UserError
from sam3_lora.core.schema import parse_command_line
from sam3_lora.lora import read_adapter
from sam3_lora.lora.targets import part_of
from sam3_lora.pipeline.use_settings import DescribeSettings


def describe(path) -> str:
    info, tensors = read_adapter(path)
    cfg = info.config
    params = sum(t.numel() for t in tensors.values())
    by_part = Counter(part_of(name) or "other" for name in info.targets)
    slices = Counter(s for ss in info.targets.values() for s in ss)
    lines = [
        f"adapter: {path}",
        f"base model: {info.base_model} (architecture fingerprint {info.base_fingerprint}, weights fingerprint "
        f"{info.base_weights_fingerprint or 'not recorded'})",
        f"LoRA: rank {cfg.rank}, alpha {cfg.alpha:g} (scale {cfg.scale:g}{', rsLoRA' if cfg.use_rslora else ''}), "
        f"dropout {cfg.dropout:g}",
        f"targets: {', '.join(cfg.targets)}; parts: {', '.join(cfg.parts)}"
        + (f"; regex: {cfg.target_regex}" if cfg.target_regex else ""),
        f"adapted modules: {len(info.targets)} ({', '.join(f'{p} {n}' for p, n in by_part.items())}); "
        f"updates: {', '.join(f'{s} x{n}' for s, n in sorted(slices.items()))}",
        f"modules_to_save: {', '.join(info.modules_to_save) or 'none'}",
        f"parameters: {params:,} in {len(tensors)} tensors ({sum(t.numel() * t.element_size() for t in tensors.values()) / 1e6:.2f} MB)",
        f"written by: {', '.join(f'{k} {v}' for k, v in info.versions.items())}",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    try:
        settings = parse_command_line(DescribeSettings, argv, __doc__)
        print(describe(settings.adapter))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
