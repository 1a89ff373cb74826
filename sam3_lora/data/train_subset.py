"""A training split drawn from a larger one by a seed (``dataset.train_images``, ``data_seed``).

Seeds that only start the model and the loader elsewhere measure initialisation noise; drawing the
training images as well lets the spread over seeds cover the noise of which data was labelled.
The draw is a function of the seed and the split's image ids alone: the same seed draws the same
images on every machine and rank, another seed another set. The drawn images keep every annotation
and the split's category list (so category ids and prompts are unchanged); the file is written beside
the run's cleaned copies, the original is never modified.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from sam3_lora.core.atomic_files import atomic_write_json
from sam3_lora.core.errors import UserError


class TrainSubsetError(UserError, ValueError):
    """More training images asked for than the split has."""


def subset_path(out_dir, split: str = "train") -> Path:
    return Path(out_dir) / f"{split}_drawn.coco.json"


def drawn_image_ids(image_ids, count: int, seed: int) -> list:
    """``count`` of ``image_ids``, drawn by ``seed`` (sorted, so the file reads in id order)."""
    ids = sorted(image_ids)
    return sorted(random.Random(f"train_images-{seed}").sample(ids, count))


def draw_train_subset(ann_file, count: int, seed: int, out_dir, key: str = "dataset.train_images") -> str:
    """Write ``count`` images of ``ann_file`` drawn by ``seed`` (and their annotations) to the run's
    data folder; returns that file."""
    coco = json.loads(Path(ann_file).read_text())
    images = coco["images"]
    if count > len(images):
        raise TrainSubsetError(
            f"{key}={count}: {ann_file} has {len(images)} images; ask for at most {len(images)} "
            f"(or {key}=null to train on all of them)"
        )
    kept = set(drawn_image_ids((im["id"] for im in images), count, seed))
    subset = {
        **coco,
        "images": [im for im in images if im["id"] in kept],
        "annotations": [a for a in coco["annotations"] if a["image_id"] in kept],
    }
    out = subset_path(out_dir)
    atomic_write_json(out, subset, indent=None)
    return str(out)
