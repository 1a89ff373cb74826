"""COCO-format data into sam3's own dataset, transforms and collator.

Category names become text prompts. Every image yields one query per category
present, plus up to ``num_hard_negatives`` queries for categories absent from it
(so the tuned model keeps respecting its prompt). Evaluation asks every category
of every image, so false positives on absent categories count against AP.

Every image is used exactly once per pass: an image that fails to load stops with
its file, id and fix (sam3's dataset would silently load the next image instead).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import random
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image
from sam3.train.data.coco_json_loaders import COCO_FROM_JSON
from sam3.train.data.sam3_image_dataset import Sam3ImageDataset
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from sam3_lora.core.errors import UserError
from sam3_lora.core.stop_signals import shield_worker
from sam3_lora.data.config import Split
from sam3_lora.data.image_decode import ImageModeError, open_rgb
from sam3_lora.data.validate import DataValidationError
from sam3_lora.sam3_compat.prompt_tokens import token_ids

log = logging.getLogger("sam3_lora.data")

COLLATE_KEY = "all"


class ImageLoadError(UserError, RuntimeError):
    """An image could not be loaded while training or evaluating (it was changed after
    validation, or validation was off)."""

    def __init__(self, message: str):
        # A DataLoader worker's error reaches the main process as "Caught ImageLoadError in
        # DataLoader worker ... Original Traceback ...: <message>": keep the message only.
        marker = f"{type(self).__name__}: "
        if message.startswith("Caught ") and marker in message:
            message = message.split(marker, 1)[1].rstrip()
        super().__init__(message)


# A query with nothing to find, in the fields sam3's COCO loader gives each query.
NEGATIVE_QUERY = {
    "query_processing_order": 0,
    "ptr_x_query_id": None,
    "ptr_y_query_id": None,
    "image_id": 0,
    "input_box": None,
    "input_box_label": None,
    "input_points": None,
    "is_exhaustive": True,
}


class HardNegativeCocoLoader(COCO_FROM_JSON):
    """sam3's COCO loader, keeping all positive queries and a random few negatives.

    Negatives are the dataset's categories absent from the image plus ``negative_prompts`` (names
    from beyond the dataset, never in any image). ``num_hard_negatives < 0`` keeps every negative
    (upstream's behaviour for the categories); ``0`` keeps none.
    """

    def __init__(self, annotation_file, num_hard_negatives: int = -1, negative_prompts: Sequence[str] = (), **kwargs):
        super().__init__(annotation_file, include_negatives=num_hard_negatives != 0, **kwargs)
        self.num_hard_negatives = num_hard_negatives
        # a negative that is a category's prompt as sam3's tokenizer reads it would ask for that category as absent
        known = {token_ids(name) for name in self._cat_idx_to_text.values()}
        self.negative_prompts = [n for n in negative_prompts if token_ids(n) not in known]

    def loadQueriesAndAnnotationsFromDatapoint(self, idx):
        queries, annotations = super().loadQueriesAndAnnotationsFromDatapoint(idx)
        if self.include_negatives:
            for i, name in enumerate(self.negative_prompts):  # ids below 0: no category of the dataset
                extra = {"id": len(queries), "original_cat_id": -1 - i, "query_text": name, "object_ids_output": []}
                queries.append({**NEGATIVE_QUERY, **extra})
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


class StrictImageDataset(Sam3ImageDataset):
    """sam3's dataset without its retry loop, which answers a datapoint that fails to load
    with the next one (so an image is skipped, another counted twice, and AP computed on
    that without a word). Here a failure stops with the image's file, id and the fix.

    Training datapoints without any prompt (an image without annotations when
    ``num_hard_negatives=0``) are left out up front and counted in the log.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.training:
            self._drop_promptless()
            self._log_prompts_over_cap()

    def _drop_promptless(self) -> None:
        if self.coco.include_negatives:  # every image is asked for absent categories too
            return
        chunks = len(self.coco.category_chunks)
        keep = [i for i, d in enumerate(self.ids.tolist()) if self.coco._raw_data[d // chunks]["annotations"]]
        if not keep:
            raise DataValidationError(
                f"{self.annFile}: no image has a prompt to train on (no annotations, and "
                "dataset.num_hard_negatives=0); annotate the split, or set dataset.num_hard_negatives=-1"
            )
        if len(keep) < len(self.ids):
            log.info(
                "%s: %d of %d images have no annotation and so no prompt (dataset.num_hard_negatives=0): left out",
                self.annFile,
                len(self.ids) - len(keep),
                len(self.ids),
            )
            self.ids, self.repeat_factors = self.ids[keep], self.repeat_factors[keep]

    def _log_prompts_over_cap(self) -> None:
        # crowd regions are not targets (FilterCrowds runs before the cap)
        over = sum(
            n > self.max_ann_per_img
            for entry in self.coco._raw_data
            for n in Counter(a["category_id"] for a in entry["annotations"] if not a["iscrowd"]).values()
        )
        if over:
            log.warning(
                "%s: %d prompts (image, category) have more than dataset.max_ann_per_img=%d objects and are left "
                "out of training; raise dataset.max_ann_per_img to keep them",
                self.annFile,
                over,
                self.max_ann_per_img,
            )

    def __getitem__(self, idx):
        datapoint = self._load_datapoint(idx)  # what Sam3ImageDataset.__getitem__ does, without its retries
        for transform in self._transforms:
            datapoint = transform(datapoint, epoch=self.curr_epoch)
        return datapoint

    def _load_images(self, datapoint_id, img_ids_to_load=None):
        """sam3's image loading (the datapoint's images and their metadata), each image decoded by
        ``data/image_decode.py`` (16-bit, palette, CMYK, alpha, EXIF orientation) instead of PIL's
        ``convert("RGB")``."""
        images, metadata = [], []
        try:
            for meta in self.coco.loadImagesFromDatapoint(datapoint_id):
                if img_ids_to_load is not None and meta["id"] not in img_ids_to_load:
                    continue
                if self.fix_fname:
                    meta["file_name"] = meta["file_name"].split("/")[-1]
                metadata.append(meta)
                images.append((meta["id"], open_rgb(os.path.join(self.root, meta["file_name"]))))
            return images, metadata
        except ImageModeError as e:
            raise ImageLoadError(f"{self.annFile}: {e}") from None
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            (meta,) = self.coco.loadImagesFromDatapoint(datapoint_id)
            raise ImageLoadError(
                f"{self.annFile}: image id {meta['coco_img_id']} ({Path(self.root) / meta['file_name']}) cannot be "
                f"loaded: {e}\n  Fix: restore or re-export the image, or delete it and its annotations from the JSON; "
                "dataset.validate.check_images=true (the default) checks every image before the run starts"
            ) from None


def build_dataset(
    split: Split,
    resolution: int,
    training: bool,
    num_hard_negatives: int = -1,
    max_ann_per_img: int = 200,
    hflip: float = 0.5,
    scale_min: float = 1.0,
    category_chunk_size: Optional[int] = None,
    negative_prompts: Sequence[str] = (),
) -> Dataset:
    """A ``StrictImageDataset`` (sam3's ``Sam3ImageDataset``, every image exactly once) over one split."""
    if training:
        loader = functools.partial(
            HardNegativeCocoLoader, num_hard_negatives=num_hard_negatives, negative_prompts=negative_prompts
        )
    else:
        loader = functools.partial(COCO_FROM_JSON, include_negatives=True, category_chunk_size=category_chunk_size)
    with contextlib.redirect_stdout(io.StringIO()):  # sam3 prints "Raw dataset length = N"
        return StrictImageDataset(
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
    resumed run draws the same augmentations as an uninterrupted one (``RunState.epoch_batches``).
    """
    sampler = DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=training, seed=seed, drop_last=training
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=functools.partial(collate, with_masks=training),
        drop_last=training,
        worker_init_fn=shield_worker,
    )
