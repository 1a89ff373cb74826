"""A small SAM3 pretrained on the toy ``base`` domain: the frozen base of the quick start (``model=sam3_tiny_toy``).

Made by this project, not downloaded: a short full training run of the toy-size model on synthetic
shapes, with the same trainer and loss as everything else. The default recipe's weights ship with the
package (``assets/toy_base.pt``: sam3.pt's layout, fp16, 8.5 MB, written by ``tools/toy_base.py write``
and checked by ``make verify-toy-base``), so the quick start starts at once and its base is the same on
every machine. Any other recipe is pretrained on first use and cached under a key of the recipe and the
torch build. A recipe that trains sits above the models and the trainer both: building this ``model``
option may train.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from sam3_lora.core.device import seed_everything
from sam3_lora.core.schema import REQUIRED, at_least, positive, setting
from sam3_lora.data import toy
from sam3_lora.data.config import Split
from sam3_lora.data.sam3_dataset import build_dataset, build_loader
from sam3_lora.models import build_model
from sam3_lora.models.sam3_layout import save_sam3_checkpoint
from sam3_lora.training.checkpoint import rng_state, set_rng_state
from sam3_lora.training.config import TrainerConfig
from sam3_lora.training.optim import adamw, warmup_cosine
from sam3_lora.training.trainer_factory import build_trainer

log = logging.getLogger(__name__)

PRETRAIN_THREADS = 2
TOY_SIZE = "toy"  # sam3_lora/models/sizes.py
SHIPPED = Path(__file__).parent / "assets" / "toy_base.pt"


def _recipe(steps: int, lr: float, batch_size: int, seed: int, train_images: int) -> dict:
    return {
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "train_images": train_images,
        "toy_version": toy.GENERATOR_VERSIONS["base"],
        "model": TOY_SIZE,
        "optimizer": "AdamW(fused)",
        "threads": PRETRAIN_THREADS,  # float sums, so the weights, depend on the thread count
    }


def shipped_recipe() -> Optional[dict]:
    """The recipe the shipped weights were made with (None when the package carries none)."""
    if not SHIPPED.is_file():
        return None
    return torch.load(SHIPPED, map_location="cpu", weights_only=True, mmap=True).get("recipe")


def ensure_toy_base(
    cache_dir, steps: int = 1500, lr: float = 1e-3, batch_size: int = 4, seed: int = 0, train_images: int = 400
) -> Path:
    """The shipped weights when they are of this recipe; else the cached checkpoint, trained first if
    this recipe has not been run with this torch build on this machine."""
    recipe = _recipe(steps, lr, batch_size, seed, train_images)
    if recipe == shipped_recipe():
        return SHIPPED
    return pretrained(cache_dir, recipe)


def pretrained(cache_dir, recipe: dict) -> Path:
    """``recipe`` pretrained here (once: cached under a key of the recipe and the torch build)."""
    key = hashlib.sha256(json.dumps({**recipe, "torch": torch.__version__}, sort_keys=True).encode()).hexdigest()[:12]
    cache_dir = Path(cache_dir).expanduser()
    path = cache_dir / f"toy_base_{key}.pt"
    if path.is_file():
        return path
    steps, seed = recipe["steps"], recipe["seed"]
    log.info(
        "pretraining the toy-size SAM3 on the toy 'base' domain (%d steps, ~10 min on 2 CPU cores; first run only, cached at %s)",
        steps,
        path,
    )
    data = toy.ensure(
        cache_dir / f"toy_base_data_{seed}",
        domain="base",
        seed=seed,
        splits={"train": recipe["train_images"], "valid": 0, "test": 0},
    )
    # Pretraining must not move the caller's random streams: a run then trains the same
    # whether its base came from the cache or was just made.
    outer, threads = rng_state(), torch.get_num_threads()
    # Deliberately on the CPU, on two threads, whatever the machine: the 4M-parameter model is
    # launch-bound on a GPU, and its small matrices gain nothing from many threads (a 16-core GPU
    # machine pretrained at half a 2-core one's speed on 16). Fixed, so the cached base is the same
    # everywhere (2-core CPU: the 1500 steps in ~10 min on two threads).
    torch.set_num_threads(PRETRAIN_THREADS)
    try:
        _pretrain(data, path, recipe)
    finally:
        set_rng_state(outer)
        torch.set_num_threads(threads)
    return path


def _pretrain(data: Path, path: Path, recipe: dict) -> None:
    steps, lr, batch_size, seed = recipe["steps"], recipe["lr"], recipe["batch_size"], recipe["seed"]
    seed_everything(seed)
    model = build_model(TOY_SIZE)
    split = Split(str(data / "train" / toy.ANNOTATIONS), str(data / "train"))
    loader = build_loader(
        build_dataset(split, model.image_size, training=True), batch_size, True, num_workers=1, seed=seed
    )
    cfg = TrainerConfig(
        max_epochs=10**6,
        max_steps=steps,
        batch_size=batch_size,
        clip_grad=0.5,
        amp="off",
        log_every=100,
        auto_resume=False,
        device="cpu",
    )
    with tempfile.TemporaryDirectory() as scratch:
        trainer = build_trainer(
            cfg,
            model,
            loader,
            make_optimizer=functools.partial(adamw, lr=lr, weight_decay=0.05, betas=(0.9, 0.999), fused=True),
            make_scheduler=functools.partial(warmup_cosine, warmup_ratio=0.1, min_lr_ratio=0.01),
            run_dir=Path(scratch),
            device=torch.device("cpu"),
        )
        trainer.fit()
    save_sam3_checkpoint(model, path, recipe=recipe)


@dataclass
class ToyBaseSettings:
    """``model=sam3_tiny_toy``: the recipe of the toy base (a different recipe is another cached base)."""

    _target_: str = "sam3_lora.pipeline.toy_base.build_toy_base_model"
    name: str = setting(REQUIRED, "the model's name in adapters, results and cards")
    cache_dir: str = setting(
        "${oc.env:SAM3_LORA_CACHE,'~/.cache/sam3_lora'}", "where the pretrained weights are cached", names_run=False
    )
    steps: int = setting(1500, "pretraining optimizer steps", at_least(1))
    lr: float = setting(
        1e-3, "pretraining peak learning rate (AdamW, warmup and cosine)", positive("a positive learning rate")
    )
    batch_size: int = setting(4, "pretraining images per step", at_least(1))
    seed: int = setting(0, "the pretraining run's seed (data and initialisation)")
    train_images: int = setting(400, "base-domain images generated for pretraining", at_least(1))

    def weights(self) -> str:
        """Where the weights come from (``check`` prints it)."""
        recipe = _recipe(self.steps, self.lr, self.batch_size, self.seed, self.train_images)
        if recipe == shipped_recipe():
            return f"the toy base shipped with sam3_lora ({SHIPPED})"
        return (
            f"pretrained by this project on toy shapes ({self.steps} steps, first use only; cached in {self.cache_dir})"
        )


def build_toy_base_model(
    name: str = "tiny_toy",
    cache_dir: str = "~/.cache/sam3_lora",
    steps: int = 1500,
    lr: float = 1e-3,
    batch_size: int = 4,
    seed: int = 0,
    train_images: int = 400,
    eval_mode: bool = False,
):
    """Entry of ``model=sam3_tiny_toy``: the toy-size SAM3 with the cached toy-pretrained weights."""
    path = ensure_toy_base(cache_dir, steps, lr, batch_size, seed, train_images)
    return build_model(TOY_SIZE, checkpoint_path=str(path), eval_mode=eval_mode)
