"""``preserve=distill``'s anchor images made ready for a run: found (toy anchors generated), checked
against every scored split, written as the run's ``anchors.coco.json``, and their loader (the
settings: ``distill.py``; the term: ``distill_loss.py``; the image lists: ``sam3_lora/data/anchors.py``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional

from sam3_lora.data import toy
from sam3_lora.data.anchors import ANCHORS_FILE, AnchorError, anchor_images, refuse_scored_overlap, write_anchor_split
from sam3_lora.data.config import Split
from sam3_lora.data.prepare import PreparedDataset
from sam3_lora.data.prompt_lists import read_prompt_list
from sam3_lora.data.sam3_dataset import build_dataset, build_loader
from sam3_lora.training import distributed
from sam3_lora.training.distributed import DistInfo

log = logging.getLogger(__name__)

TARGET_IMAGES = "target"  # preserve.images: the training split's own images


def anchor_vocabulary(config, target_train: Optional[Split]) -> List[str]:
    """``preserve.vocabulary``; with the target's images as anchors, less its training categories unless
    ``keep_training_categories`` (there the teacher's answers would contradict the labels)."""
    names = read_prompt_list(config.vocabulary, "preserve.vocabulary")
    if config.images != TARGET_IMAGES or config.keep_training_categories:
        return names
    fix = "Restore the target's training data, or set preserve.images to other anchors"
    trained = {name.casefold() for name in target_train.category_names(fix, AnchorError)}
    kept = [n for n in names if n.casefold() not in trained]
    if not kept:
        raise AnchorError(
            f"preserve.images=target: every name of preserve.vocabulary ({', '.join(names)}) is a training category, "
            "and those are left out on the training images (the teacher's answers would contradict the labels). "
            "Add concepts the base knows beyond the training categories, or set preserve.keep_training_categories=true"
        )
    return kept


def generate_toy_anchors(config) -> None:
    """Toy anchors (``preserve.generate``): written on first use so that ``preserve.images`` is their train folder."""
    g = config.generate
    folder = Path(config.images)
    if folder.name != "train":
        raise AnchorError(f"preserve.generate: preserve.images={config.images} must be a toy dataset's train folder")
    toy.ensure(folder.parent, domain=g.domain, seed=g.seed, size=g.size, splits=dict(g.splits))


def prepare_anchors(
    config,
    target: PreparedDataset,
    retention: Optional[PreparedDataset],
    run_dir: Path,
    info: DistInfo,
) -> Optional[Split]:
    """``preserve.images`` as the run's ``anchors.coco.json`` (toy anchors generated first), checked against
    every split a figure is computed on — before any model is built or scored."""
    if config.generate is not None:
        if info.is_main:
            generate_toy_anchors(config)
        distributed.barrier(info)
    train = target.require("train") if config.images == TARGET_IMAGES else None
    records, folder = anchor_images(config.images, config.img_folder, train, config.image_ids)
    vocabulary = anchor_vocabulary(config, train)
    if info.is_main:
        write_anchor_split(records, folder, vocabulary, run_dir)
    distributed.barrier(info)
    split = Split(str(run_dir / ANCHORS_FILE), str(folder))
    checked = refuse_scored_overlap(split, scored_splits(target, retention))
    log.info(
        "distillation: %d anchor images (%s), none in a scored split; %d anchor concepts, %s asked per image; weight %g",
        checked,
        config.images,
        len(vocabulary),
        "all" if config.prompts_per_image < 0 else config.prompts_per_image,
        config.weight,
    )
    return split


def anchor_loader(config, anchors: Split, image_size: int, num_workers: int, seed: int, info: DistInfo):
    """The anchor images in batches of ``preserve.anchor_batch``, each asked ``prompts_per_image`` concepts."""
    dataset = build_dataset(
        anchors, image_size, training=True, num_hard_negatives=config.prompts_per_image, hflip=0.0, scale_min=1.0
    )
    return build_loader(
        dataset, config.anchor_batch, True, num_workers, seed=seed + 1, world_size=info.world_size, rank=info.rank
    )


def scored_splits(target: PreparedDataset, retention: Optional[PreparedDataset]) -> Dict[str, Split]:
    """The splits figures are computed on: valid and test of the target and of the retention dataset."""
    found = {}
    for data in (target, retention):
        for name in ("valid", "test"):
            if data is not None and data.split(name) is not None:
                found[f"{data.name}/{name}"] = data.split(name)
    return found
