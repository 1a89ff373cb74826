"""Distillation's anchor images (``preserve.images``) as a COCO split, and the rule that keeps them out
of every score.

The anchors are unlabelled: a folder of images, the images of a COCO file (its labels ignored; or only
those ``preserve.image_ids`` lists, such as the shipped ``coco_val2017_anchors``), or the target's own
training images. They are written as ``anchors.coco.json`` in the run directory —
the images, no annotations, the anchor vocabulary as categories — so sam3's own dataset asks each
image ``preserve.prompts_per_image`` of those concepts as queries with nothing to find (the teacher's
answers are the targets). An anchor image with the same bytes as an image of a scored split (the
target's or the retention dataset's valid and test) is refused: the base's answers on it would
leak into the very figures that measure what tuning kept.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from sam3_lora.core.atomic_files import atomic_write_json
from sam3_lora.core.errors import UserError
from sam3_lora.data.config import Split
from sam3_lora.data.image_decode import displayed_size
from sam3_lora.data.image_files import is_image_file
from sam3_lora.data.train_subset import read_image_ids

ANCHORS_FILE = "anchors.coco.json"


class AnchorError(UserError, ValueError):
    """Anchor images that cannot be used: none found, unreadable, or also images of a scored split."""


def _coco_images(ann_file: Path) -> List[dict]:
    try:
        return json.loads(Path(ann_file).read_text())["images"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AnchorError(f"preserve.images={ann_file}: not a readable COCO file with an 'images' list ({e})") from e


def _folder_images(folder: Path) -> List[dict]:
    images = []
    for path in sorted(p for p in folder.iterdir() if is_image_file(p)):
        try:
            width, height = displayed_size(path)
        except OSError as e:
            raise AnchorError(
                f"preserve.images={folder}: {path.name} cannot be read as an image ({e}); remove it from the folder"
            ) from e
        images.append({"file_name": path.name, "width": width, "height": height})
    return images


def _listed(records: List[dict], ann_file: Path, image_ids) -> List[dict]:
    """The records of ``ann_file`` whose ids ``image_ids`` lists (``preserve.image_ids``), in its order."""
    ids, where = read_image_ids(image_ids, "preserve.image_ids")
    by_id = {r.get("id"): r for r in records}
    missing = [i for i in ids if i not in by_id]
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise AnchorError(
            f"preserve.image_ids={image_ids}: {len(missing)} of its {len(ids)} ids are no image of {ann_file}: "
            f"{shown}. "
            "Point preserve.images at the COCO file these ids come from, or list ids of this one"
        )
    return [by_id[i] for i in ids]


def anchor_images(
    images: str, img_folder: str = None, target_train: Split = None, image_ids=None
) -> Tuple[List[dict], Path]:
    """The anchor images ``preserve.images`` names (COCO image records) and their folder; with
    ``image_ids`` (``preserve.image_ids``) only those of a COCO file."""
    if image_ids is not None and (images == "target" or not Path(images).is_file()):
        raise AnchorError(
            f"preserve.image_ids={image_ids}: it picks images of a COCO annotation file, and preserve.images={images} "
            "is not one; give the file (preserve.images=/data/coco/annotations/instances_val2017.json), or drop "
            "preserve.image_ids"
        )
    if images == "target":
        return _coco_images(Path(target_train.ann_file)), Path(target_train.img_folder)
    path = Path(images)
    if path.is_dir():
        found, folder = _folder_images(path), path
    elif path.is_file():
        found, folder = _coco_images(path), Path(img_folder) if img_folder else path.parent
        if image_ids is not None:
            found = _listed(found, path, image_ids)
    else:
        raise AnchorError(
            f"preserve.images={images}: no such folder or file; give a folder of images, a COCO annotation file, "
            "or 'target' (the training images)"
        )
    if not found:
        raise AnchorError(f"preserve.images={images}: no images there")
    return found, folder


def write_anchor_split(records: Sequence[dict], folder: Path, vocabulary: Sequence[str], out_dir: Path) -> Split:
    """``anchors.coco.json`` in ``out_dir``: the images, no annotations, the vocabulary as categories."""
    coco = {
        "images": [
            {"id": i + 1, "file_name": r["file_name"], "width": r["width"], "height": r["height"]}
            for i, r in enumerate(records)
        ],
        "annotations": [],
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(vocabulary)],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ANCHORS_FILE
    atomic_write_json(path, coco, indent=None)
    return Split(str(path), str(folder))


def file_digest(path: Path) -> str:
    """A file's SHA-256: what says two images are the same image, whatever their names."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _split_files(split: Split) -> List[Path]:
    return [Path(split.img_folder) / im["file_name"] for im in _coco_images(Path(split.ann_file))]


def refuse_scored_overlap(anchors: Split, scored: Dict[str, Split]) -> int:
    """Raise :class:`AnchorError` when an anchor image has the bytes of an image of a ``scored`` split
    (named ``"dataset/split"``); returns how many anchor images were checked."""
    by_digest: Dict[str, Path] = {}
    files = _split_files(anchors)
    for path in files:
        if not path.is_file():
            raise AnchorError(f"{anchors.ann_file}: anchor image {path} does not exist")
        by_digest.setdefault(file_digest(path), path)
    clashes = []
    for name, split in scored.items():
        for path in _split_files(split):
            if path.is_file() and (anchor := by_digest.get(file_digest(path))) is not None:
                clashes.append(f"{anchor} = {path} ({name})")
    if clashes:
        listed = "; ".join(clashes[:5]) + (f" (+{len(clashes) - 5} more)" if len(clashes) > 5 else "")
        raise AnchorError(
            f"{len(clashes)} anchor image(s) are also images of a scored split, so the base's answers on them "
            f"would leak into the figures that measure what tuning kept: {listed}. Take anchors from images no "
            "score uses (another folder, or preserve.images=target), or remove these from preserve.images"
        )
    return len(files)
