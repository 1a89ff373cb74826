"""COCO-format data into sam3's own dataset, transforms and collator.

Category names become text prompts. Every image yields one query per category
present, plus up to ``num_hard_negatives`` queries for categories absent from it
(so the tuned model keeps respecting its prompt). Evaluation asks every category
of every image, so false positives on absent categories count against AP.
"""

from __future__ import annotations

import contextlib
import functools
import io
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sam3.train.data.coco_json_loaders import COCO_FROM_JSON
from torch.utils.data import DataLoader, Dataset, DistributedSampler

COLLATE_KEY = "all"


@dataclass
class Split:
    """One split of a COCO dataset: the annotation file and the folder its file_names are relative to."""

    ann_file: str
    img_folder: str

    def exists(self) -> bool:
        return Path(self.ann_file).is_file()


class HardNegativeCocoLoader(COCO_FROM_JSON):
    """sam3's COCO loader, keeping all positive queries and a random few negatives.

    ``num_hard_negatives < 0`` keeps every absent category as a negative (upstream's
    behaviour); ``0`` keeps none.
    """

    def __init__(self, annotation_file, num_hard_negatives: int = -1, **kwargs):
        super().__init__(annotation_file, include_negatives=num_hard_negatives != 0, **kwargs)
        self.num_hard_negatives = num_hard_negatives

    def loadQueriesAndAnnotationsFromDatapoint(self, idx):
        queries, annotations = super().loadQueriesAndAnnotationsFromDatapoint(idx)
        if self.num_hard_negatives < 0:
            return queries, annotations
        positives = [q for q in queries if q["object_ids_output"]]
        negatives = [q for q in queries if not q["object_ids_output"]]
        kept = positives + random.sample(negatives, min(self.num_hard_negatives, len(negatives)))
        kept.sort(key=lambda q: q["id"])
        for i, q in enumerate(kept):
            q["id"] = i
        return kept, annotations


def build_transforms(
    resolution: int, training: bool, hflip: float = 0.5, scale_min: float = 1.0, max_ann_per_img: int = 200
):
    """sam3's transform pipeline, as in Meta's fine-tuning configs.

    Training: drop crowd objects from the targets, decode masks, random flip, random
    resize to [scale_min * resolution, resolution] and pad to a square, normalise.
    Evaluation: resize to the model's square input and normalise.
    """
    from sam3.train.transforms.basic import get_random_resize_max_size, get_random_resize_scales
    from sam3.train.transforms.basic_for_api import (
        ComposeAPI,
        NormalizeAPI,
        PadToSizeAPI,
        RandomHorizontalFlip,
        RandomResizeAPI,
        ToTensorAPI,
    )
    from sam3.train.transforms.filter_query_transforms import (
        FilterCrowds,
        FilterEmptyTargets,
        FilterFindQueriesWithTooManyOut,
        FlexibleFilterFindGetQueries,
    )
    from sam3.train.transforms.segmentation import DecodeRle

    normalize = NormalizeAPI(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    max_size = get_random_resize_max_size(resolution)
    if not training:
        return [ComposeAPI([RandomResizeAPI(resolution, False, max_size, square=True), ToTensorAPI(), normalize])]
    min_size = max(int(scale_min * resolution), 1)
    sizes = get_random_resize_scales(resolution, min_size, rounded=False) if min_size < resolution else [resolution]
    steps = [FlexibleFilterFindGetQueries(FilterCrowds()), DecodeRle()]
    if hflip > 0:
        steps.append(RandomHorizontalFlip(consistent_transform=False, p=hflip))
    steps += [
        RandomResizeAPI(sizes, False, max_size, square=True),
        PadToSizeAPI(resolution, consistent_transform=False),
        ToTensorAPI(),
        FlexibleFilterFindGetQueries(FilterEmptyTargets()),
        normalize,
        FlexibleFilterFindGetQueries(FilterFindQueriesWithTooManyOut(max_ann_per_img)),
    ]
    return [ComposeAPI(steps)]


def build_dataset(
    split: Split,
    resolution: int,
    training: bool,
    num_hard_negatives: int = -1,
    max_ann_per_img: int = 200,
    hflip: float = 0.5,
    scale_min: float = 1.0,
    category_chunk_size: Optional[int] = None,
) -> Dataset:
    """A ``sam3.train.data.sam3_image_dataset.Sam3ImageDataset`` over one split."""
    from sam3.train.data.sam3_image_dataset import Sam3ImageDataset

    if training:
        loader = functools.partial(HardNegativeCocoLoader, num_hard_negatives=num_hard_negatives)
    else:
        loader = functools.partial(COCO_FROM_JSON, include_negatives=True, category_chunk_size=category_chunk_size)
    with contextlib.redirect_stdout(io.StringIO()):  # sam3 prints "Raw dataset length = N"
        return Sam3ImageDataset(
            img_folder=split.img_folder,
            ann_file=split.ann_file,
            transforms=build_transforms(resolution, training, hflip, scale_min, max_ann_per_img),
            max_ann_per_img=max_ann_per_img if training else 10**6,
            multiplier=1,
            training=training,
            load_segmentation=training,
            max_train_queries=10**6,
            max_val_queries=10**6,
            use_caching=False,
            coco_json_loader=loader,
        )


def collate(batch, with_masks: bool = True):
    from sam3.train.data.collator import collate_fn_api

    return collate_fn_api(batch, dict_key=COLLATE_KEY, with_seg_masks=with_masks)[COLLATE_KEY]


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start its next epoch part-way through (after a mid-epoch
    checkpoint), yielding exactly the samples the interrupted epoch had not reached."""

    skip = 0

    def skip_next(self, samples: int) -> None:
        self.skip = samples

    def __iter__(self):
        indices = list(super().__iter__())[self.skip :]
        self.skip = 0
        return iter(indices)

    def __len__(self) -> int:
        return super().__len__() - self.skip


def build_loader(
    dataset: Dataset,
    batch_size: int,
    training: bool,
    num_workers: int = 0,
    seed: int = 0,
    world_size: int = 1,
    rank: int = 0,
) -> DataLoader:
    """A loader whose order depends only on (seed, epoch): call ``loader.sampler.set_epoch``.

    The sampler shards across ranks (DDP) and reshuffles per epoch from the seed; workers
    are re-created each epoch and seeded from torch's RNG, which checkpoints save, so a
    resumed run draws the same augmentations as an uninterrupted one.
    """
    sampler = ResumableSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=training, seed=seed, drop_last=training
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=functools.partial(collate, with_masks=training),
        drop_last=training,
    )
