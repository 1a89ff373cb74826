"""The toy base that ships with sam3_lora (``sam3_lora/pipeline/assets/toy_base.pt``), made by this project.

    python tools/toy_base.py write    # pretrain the default recipe (~10 min on 2 CPU cores) and ship it
    python tools/toy_base.py verify   # pretrain again and compare with the shipped weights (make verify-toy-base)

The recipe is ``model=sam3_tiny_toy``'s (sam3_lora/pipeline/toy_base.py), run on two CPU threads; the
weights are stored in fp16 (8.5 MB; they are loaded into the fp32 model), the recipe and the torch
build beside them. Pretraining is deterministic for one torch build and thread count: ``verify`` says
whether this machine's build gives the shipped weights bit for bit, and how far they are apart if not.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from sam3_lora.models.sam3_layout import save_sam3_state
from sam3_lora.pipeline.settings import compose
from sam3_lora.pipeline.toy_base import SHIPPED, _recipe, pretrained


def regenerate(cache_dir: Path) -> dict:
    """The default recipe pretrained (or found pretrained by this torch build in ``cache_dir``):
    ``{"model": fp16 weights, "recipe", "torch"}``."""
    m = compose("train", ["model=sam3_tiny_toy"]).model
    recipe = _recipe(m.steps, m.lr, m.batch_size, m.seed, m.train_images)
    state = torch.load(pretrained(cache_dir, recipe), map_location="cpu", weights_only=True)
    weights = {k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()}
    return {"model": weights, "recipe": recipe, "torch": str(torch.__version__)}


def write() -> int:
    made = regenerate(Path(compose("train", ["model=sam3_tiny_toy"]).model.cache_dir))
    weights = {k.removeprefix("detector."): v for k, v in made["model"].items()}
    save_sam3_state(weights, SHIPPED, recipe=made["recipe"], torch=made["torch"])
    print(f"wrote {SHIPPED} ({SHIPPED.stat().st_size / 1e6:.1f} MB) with torch {made['torch']}")
    return 0


def verify() -> int:
    shipped = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    with tempfile.TemporaryDirectory() as scratch:
        made = regenerate(Path(scratch))
    if made["recipe"] != shipped["recipe"]:
        print(f"the default recipe {made['recipe']} is not the shipped one {shipped['recipe']}: run `write`")
        return 1
    diffs = {
        k: (v.float() - made["model"][k].float()).abs().max().item()
        for k, v in shipped["model"].items()
        if v.is_floating_point()
    }
    worst = max(diffs, key=diffs.get)
    same = all(torch.equal(v, made["model"][k]) for k, v in shipped["model"].items())
    print(f"shipped: torch {shipped.get('torch')}; regenerated here: torch {made['torch']}")
    print("identical, bit for bit" if same else f"they differ: largest difference {diffs[worst]:.3g} in {worst}")
    return 0 if same else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=("write", "verify"))
    return {"write": write, "verify": verify}[ap.parse_args(argv).action]()


if __name__ == "__main__":
    sys.exit(main())
