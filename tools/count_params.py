"""Trainable parameters and adapter size of each LoRA preset, on a chosen model.

    python tools/count_params.py                  # the tiny model
    python tools/count_params.py --model sam3     # the full 840M architecture (random weights)

Composes the real ``conf/lora/*.yaml`` presets, injects each into a fresh copy of the
model, writes the adapter file and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

from hydra.utils import instantiate

from sam3_lora.lora import count_trainable, inject_lora, save_adapter
from sam3_lora.pipeline.settings import compose

PRESETS = ("minimal", "balanced", "full", "heads")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sam3_tiny", help="a conf/model option: sam3, sam3_tiny, sam3_medium")
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    args = parser.parse_args()

    overrides = [f"model={args.model}"] + (["model.random_init=true"] if args.model == "sam3" else [])
    base_cfg = compose("train", overrides)
    base = instantiate(base_cfg.model)
    total = sum(p.numel() for p in base.parameters())
    print(f"\nmodel={args.model}: {total / 1e6:.1f}M parameters\n")
    print("| preset | rank / alpha | targets | parts | LoRA modules | trainable | % of model | adapter file |")
    print("|---|---|---|---|---|---|---|---|")
    for preset in args.presets:
        cfg = compose("train", [*overrides, f"lora={preset}"])
        lora = instantiate(cfg.lora).config  # the LoRA method's settings
        model = copy.deepcopy(base)
        report = inject_lora(model, lora)
        trainable = count_trainable(model)
        with tempfile.TemporaryDirectory() as tmp:
            size = save_adapter(model, Path(tmp) / "a.safetensors", base_model=cfg.model.name).stat().st_size
        print(
            f"| {preset} | {lora.rank} / {lora.alpha:g} | {', '.join(lora.targets)} | {', '.join(lora.parts)} "
            f"| {len(report.targets)} | {trainable:,} | {100 * trainable / total:.2f}% "
            f"| {size / 1e6:.2f} MB |"
        )
        del model


if __name__ == "__main__":
    main()
