"""Check a COCO split before training; report every problem with file, id and fix.

Problems that make the data ambiguous stop the run (all of them are listed at once):
malformed JSON, missing top-level keys, duplicate ids, annotations naming an unknown
image or category, a missing ``iscrowd``, images that are missing, undecodable or of
another size than the JSON says.

Problems confined to one annotation are repaired or skipped, and counted: a box
partly outside the image is clipped to it; a box entirely outside it, or of zero
width or height, is dropped; an empty or invalid segmentation is removed (the
annotation still supervises the box). When anything was repaired, the cleaned
annotations are written into the run directory and used instead of the original.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from PIL import Image, UnidentifiedImageError

from sam3_lora.errors import UserError

MAX_LISTED = 10  # per kind of problem; the count says how many more


class DataValidationError(UserError, ValueError):
    """The dataset has problems that stop training; the message lists them."""


@dataclass
class ValidationReport:
    ann_file: str
    errors: Dict[str, List[str]] = field(default_factory=lambda: defaultdict(list))
    repaired: Counter = field(default_factory=Counter)
    examples: Dict[str, List[str]] = field(default_factory=lambda: defaultdict(list))
    num_images: int = 0
    num_annotations: int = 0

    def error(self, kind: str, message: str) -> None:
        self.errors[kind].append(message)

    def repair(self, kind: str, message: str) -> None:
        self.repaired[kind] += 1
        if len(self.examples[kind]) < 3:
            self.examples[kind].append(message)

    def summary(self) -> str:
        lines = [f"{self.ann_file}: {self.num_images} images, {self.num_annotations} annotations"]
        for kind, messages in self.errors.items():
            lines.append(f"  ERROR {kind} ({len(messages)}):")
            lines += [f"    - {m}" for m in messages[:MAX_LISTED]]
            if len(messages) > MAX_LISTED:
                lines.append(f"    ... and {len(messages) - MAX_LISTED} more")
        for kind, count in self.repaired.items():
            lines.append(f"  repaired/skipped {kind}: {count} (e.g. {'; '.join(self.examples[kind])})")
        return "\n".join(lines)


def _valid_polygons(seg) -> bool:
    return isinstance(seg, list) and any(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in seg)


def _valid_rle(seg, h: int, w: int) -> bool:
    if not (isinstance(seg, dict) and "counts" in seg and "size" in seg):
        return False
    if list(seg["size"]) != [h, w]:
        return False
    from pycocotools import mask as mask_util

    try:
        rle = mask_util.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
        return int(mask_util.area(rle)) > 0
    except (TypeError, ValueError):
        return False


def _check_image(path: Path, width: int, height: int) -> Optional[str]:
    if not path.is_file():
        return "file not found"
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        return f"cannot be decoded ({e})"
    if size != (width, height):
        return f"is {size[0]}x{size[1]} but the JSON says {width}x{height}"
    return None


def _check_box(ann: dict, w: int, h: int, report: ValidationReport, where: str) -> Optional[List[float]]:
    """The annotation's box clipped to the image, or None when nothing of it is inside."""
    box = ann.get("bbox")
    if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        report.repair("invalid bbox (dropped)", f"{where}: bbox {box!r}")
        return None
    x, y, bw, bh = box
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + bw, w), min(y + bh, h)
    if bw <= 0 or bh <= 0 or x1 - x0 <= 0 or y1 - y0 <= 0:
        kind = "zero-size bbox (dropped)" if bw <= 0 or bh <= 0 else "bbox outside the image (dropped)"
        report.repair(kind, f"{where}: bbox {box} in a {w}x{h} image")
        return None
    tolerance = 0.5  # pixels; exports often round coordinates past the border
    if x < -tolerance or y < -tolerance or x + bw > w + tolerance or y + bh > h + tolerance:
        clipped = [x0, y0, x1 - x0, y1 - y0]
        report.repair("bbox partly outside the image (clipped)", f"{where}: {box} -> {[round(v, 2) for v in clipped]}")
        return clipped
    return list(box)


def validate_split(ann_file, img_folder, check_images: bool = True) -> Tuple[ValidationReport, Optional[dict]]:
    """Return the report and, when annotations were repaired, the cleaned COCO dict."""
    report = ValidationReport(str(ann_file))
    ann_path, img_folder = Path(ann_file), Path(img_folder)
    if not ann_path.is_file():
        report.error("missing annotation file", f"{ann_path} does not exist; set dataset.<split>.ann_file")
        return report, None
    try:
        coco = json.loads(ann_path.read_text())
    except json.JSONDecodeError as e:
        report.error("malformed JSON", f"{ann_path} line {e.lineno} column {e.colno}: {e.msg}")
        return report, None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(coco.get(k), list)]
    if missing:
        report.error(
            "missing top-level keys",
            f"{ann_path} lacks list(s) {missing}; a COCO file needs images, annotations, categories",
        )
        return report, None

    images = {}
    for im in coco["images"]:
        if not all(k in im for k in ("id", "file_name", "width", "height")):
            report.error("incomplete image entries", f"image {im.get('id', '?')}: needs id, file_name, width, height")
        elif im["id"] in images:
            report.error("duplicate image ids", f"image id {im['id']} appears more than once")
        else:
            images[im["id"]] = im
    categories = {}
    for cat in coco["categories"]:
        if "id" not in cat or not str(cat.get("name", "")).strip():
            report.error("invalid categories", f"category {cat!r}: needs an id and a non-empty name (the text prompt)")
        elif cat["id"] in categories:
            report.error("duplicate category ids", f"category id {cat['id']} appears more than once")
        else:
            categories[cat["id"]] = cat
    report.num_images, report.num_annotations = len(images), len(coco["annotations"])

    if check_images:
        for im in images.values():
            problem = _check_image(img_folder / im["file_name"], im["width"], im["height"])
            if problem:
                report.error(
                    "missing or undecodable images", f"image id {im['id']}: {img_folder / im['file_name']} {problem}"
                )

    cleaned, changed = [], False
    for ann in coco["annotations"]:
        where = f"annotation id {ann.get('id', '?')} (image {ann.get('image_id', '?')})"
        if ann.get("image_id") not in images:
            report.error("annotations of unknown images", f"{where}: no image with id {ann.get('image_id')!r}")
            continue
        if ann.get("category_id") not in categories:
            report.error(
                "unknown category ids",
                f"{where}: category_id {ann.get('category_id')!r} is not in categories {sorted(categories)}",
            )
            continue
        if "iscrowd" not in ann:
            report.error("missing iscrowd", f'{where}: add "iscrowd": 0 (1 for crowd regions)')
            continue
        im = images[ann["image_id"]]
        box = _check_box(ann, im["width"], im["height"], report, where)
        if box is None:
            changed = True
            continue
        fixed = dict(ann, bbox=box)
        seg = ann.get("segmentation")
        if seg is not None and not (_valid_polygons(seg) or _valid_rle(seg, im["height"], im["width"])):
            report.repair("empty or invalid segmentation (removed, box kept)", f"{where}: {str(seg)[:60]}")
            fixed.pop("segmentation")
        changed |= fixed != ann
        cleaned.append(fixed)
    return report, (dict(coco, annotations=cleaned) if changed else None)


def cleaned_path(out_dir, split: str) -> Path:
    """Where ``validate_and_clean`` writes a split's repaired annotations (when it repairs any)."""
    return Path(out_dir) / f"{split}_cleaned.coco.json"


def validate_and_clean(
    ann_file, img_folder, out_dir: Path, split: str, check_images: bool = True
) -> Tuple[str, ValidationReport]:
    """Validate one split; raise on errors; return the annotation file to train from."""
    report, cleaned = validate_split(ann_file, img_folder, check_images)
    if report.errors:
        raise DataValidationError(f"dataset split '{split}' cannot be used:\n{report.summary()}")
    if cleaned is None:
        return str(ann_file), report
    out = cleaned_path(out_dir, split)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # atomic: a crash never leaves half a file
    tmp.write_text(json.dumps(cleaned))
    os.replace(tmp, out)
    return str(out), report
