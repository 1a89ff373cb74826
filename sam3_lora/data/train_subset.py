"""A split narrowed to some of its images: those a list names (a split's ``image_ids``: a fixed subset,
such as the shipped COCO val2017 lists), or a training split drawn from a larger one by a seed
(``dataset.train_images``, ``data_seed``).

Seeds that only start the model and the loader elsewhere measure initialisation noise; drawing the
training images as well lets the spread over seeds cover the noise of which data was labelled.
The draw is a function of the seed and the split's image ids alone: the same seed draws the same
images on every machine and rank, another seed another set. A listed subset is the same images
wherever it runs, whatever the seed. Either way the kept images keep every annotation and the split's
category list (so category ids and prompts are unchanged); the file is written beside the run's
cleaned copies, the original is never modified.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Iterable, List, Tuple

from sam3_lora.core.atomic_files import atomic_write_json
from sam3_lora.core.errors import UserError
from sam3_lora.core.schema import is_int
from sam3_lora.data.shipped import list_file, not_found

DRAWN, LISTED = "drawn", "listed"


class TrainSubsetError(UserError, ValueError):
    """More training images asked for than the split has."""


class ImageIdsError(UserError, ValueError):
    """A list of image ids that cannot be used: no such file, not ids, or ids the split does not have."""


def subset_path(out_dir, split: str = "train", kind: str = DRAWN) -> Path:
    """Where a split's subset is written: ``<split>_drawn.coco.json`` or ``<split>_listed.coco.json``."""
    return Path(out_dir) / f"{split}_{kind}.coco.json"


def write_subset(coco: dict, kept: Iterable[int], out: Path) -> str:
    """``coco`` with only the images whose ids are in ``kept`` (and their annotations), written to ``out``."""
    kept = set(kept)
    subset = {
        **coco,
        "images": [im for im in coco["images"] if im["id"] in kept],
        "annotations": [a for a in coco["annotations"] if a["image_id"] in kept],
    }
    atomic_write_json(out, subset, indent=None)
    return str(out)


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
    return write_subset(coco, drawn_image_ids((im["id"] for im in images), count, seed), subset_path(out_dir))


def is_image_id_list(value: Any) -> bool:
    """What a config may give as image ids: null, a list of integers, or a path or shipped list's name."""
    return (
        value is None
        or isinstance(value, str)
        or (isinstance(value, (list, tuple)) and all(is_int(v) and v >= 0 for v in value))
    )


def read_image_ids(value: Any, key: str) -> Tuple[List[int], str]:
    """The ids ``value`` lists (a list, or a text file with one id a line, ``#`` lines comments; order kept,
    repeats dropped) and where they came from, for messages and notes."""
    if isinstance(value, str):
        path = list_file(value)
        if path is None:
            what = f"a text file with one image id a line, a list ({key}='[139, 285]')"
            raise ImageIdsError(not_found(key, value, what))
        ids, where = [], f"{value} ({path})" if str(path) != value else value
        for number, line in enumerate(path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not line.isdigit():
                raise ImageIdsError(
                    f"{key}={value}: line {number} ({line!r}) is not an image id; one integer id a line"
                )
            ids.append(int(line))
    else:
        ids, where = [int(v) for v in value], f"{key}"
    if not ids:
        raise ImageIdsError(f"{key}={value}: no image ids; give at least one, or leave {key} unset")
    return list(dict.fromkeys(ids)), where


def listed_subset(ann_file, image_ids: Any, out_dir, split: str, key: str) -> Tuple[str, str]:
    """Write the images of ``ann_file`` that ``image_ids`` lists (and their annotations) beside the run's
    data; returns that file and a note saying what was kept. Every listed id must be an image of the file."""
    ids, where = read_image_ids(image_ids, key)
    try:
        coco = json.loads(Path(ann_file).read_text())
        present = {im["id"] for im in coco["images"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ImageIdsError(f"{key}: {ann_file} is not a readable COCO file with an 'images' list ({e})") from e
    missing = [i for i in ids if i not in present]
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise ImageIdsError(
            f"{key}={image_ids}: {len(missing)} of its {len(ids)} image ids are no image of {ann_file}: {shown}. "
            "Point the split's ann_file at the file these ids come from (COCO val2017's lists: "
            "annotations/instances_val2017.json), or list ids of this file"
        )
    out = write_subset(coco, ids, subset_path(out_dir, split, LISTED))
    return out, f"data: {split} is the {len(ids)} of {len(present)} images of {ann_file} listed in {where}"
