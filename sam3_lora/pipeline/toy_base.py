"""A small SAM3 pretrained on the toy ``base`` domain: the frozen base of the quick start (``model=sam3_tiny_toy``).

Made by this project, not downloaded: a short full training run of the toy-size model on synthetic
shapes, with the same trainer and loss as everything else. The weights are cached (sam3.pt layout)
under a key of the recipe, so only the first run pays for it. A recipe that trains sits above the
models and the trainer both: building this ``model`` option may train.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from sam3_lora.core.device import seed_everything
from sam3_lora.core.schema import at_least, positive, setting
from sam3_lora.data import toy
from sam3_lora.data.config import Split
from sam3_lora.data.sam3_dataset import build_dataset, build_loader
from sam3_lora.models import build_model
from sam3_lora.models.sam3_layout import save_sam3_checkpoint
from sam3_lora.training.checkpoint import rng_state, set_rng_state
from sam3_lora.training.config import TrainerConfig
from sam3_lora.training.loggers import Loggers
from sam3_lora.training.loss import build_sam3_loss
from sam3_lora.training.optim import warmup_cosine
from sam3_lora.training.trainer import Trainer

log = logging.getLogger(__name__)

PRETRAIN_THREADS = 2
TOY_SIZE = "toy"  # sam3_lora/models/sizes.py


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


def ensure_toy_base(
    cache_dir, steps: int = 1500, lr: float = 1e-3, batch_size: int = 4, seed: int = 0, train_images: int = 400
) -> Path:
    """The cached checkpoint, trained first if this recipe has not been run on this machine."""
    recipe = _recipe(steps, lr, batch_size, seed, train_images)
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    cache_dir = Path(cache_dir).expanduser()
    path = cache_dir / f"toy_base_{key}.pt"
    if path.is_file():
        return path
    log.info(
        "pretraining the toy-size SAM3 on the toy 'base' domain (%d steps, ~10 min on 2 CPU cores; first run only, cached at %s)",
        steps,
        path,
    )
    data = toy.ensure(
        cache_dir / f"toy_base_data_{seed}",
        domain="base",
        seed=seed,
        splits={"train": train_images, "valid": 0, "test": 0},
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
        _pretrain(data, path, recipe, steps, lr, batch_size, seed)
    finally:
        set_rng_state(outer)
        torch.set_num_threads(threads)
    return path


def _pretrain(data: Path, path: Path, recipe: dict, steps: int, lr: float, batch_size: int, seed: int) -> None:
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
        trainer = Trainer(
            model=model,
            loss_fn=build_sam3_loss(model.transformer.decoder.num_queries),
            make_optimizer=functools.partial(torch.optim.AdamW, lr=lr, weight_decay=0.05, fused=True),
            make_scheduler=functools.partial(warmup_cosine, warmup_ratio=0.1, min_lr_ratio=0.01),
            train_loader=loader,
            evaluator=None,
            loggers=Loggers([]),
            run_dir=Path(scratch),
            cfg=cfg,
            save_weights=lambda m, tag: None,
            device=torch.device("cpu"),
        )
        trainer.fit()
    save_sam3_checkpoint(model, path, recipe=recipe)


@dataclass
class ToyBaseSettings:
    """``model=sam3_tiny_toy``: the recipe of the toy base (a different recipe is another cached base)."""

    _target_: str = "sam3_lora.pipeline.toy_base.build_toy_base_model"
    name: str = setting("tiny_toy", "the model's name in adapters, results and cards")
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
