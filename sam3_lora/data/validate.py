"""Check a COCO split before training or evaluation; report every problem with file, id and fix.

Problems that make the data ambiguous stop the run (all of them are listed at once, each
kind with its fix): unreadable or malformed JSON, missing top-level lists, entries of the
wrong shape or type, duplicate ids or category names, annotations naming an unknown image
or category, a missing or invalid ``iscrowd``, images that are missing, undecodable or of
another size than the JSON says.

Problems confined to one annotation are repaired, and counted, so that what comes out is
accepted by sam3's loader and by pycocotools' COCOeval alike and box and mask agree:

* a box partly outside the image is clipped to it; a polygon partly outside it is clipped
  too (and the area recomputed);
* a missing, invalid, zero-size or outside box is taken from the mask when there is one,
  otherwise the annotation is dropped (nothing of it is in the image);
* an invalid segmentation (malformed polygon or RLE, no pixel inside the image, or nowhere
  near its box) is removed: the box still supervises, and evaluation treats an annotation
  without a mask as an ignore region for segm AP (``sam3_lora.evaluation.coco_ap``);
* a missing or invalid ``area`` is computed from the mask (or the box).

Empty segmentations (``[]``, ``null`` or no key: box-only data) are valid as they are.
When anything was repaired, the cleaned annotations are written to ``out_dir`` and used
instead of the original, which is never modified.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from PIL import Image
from pycocotools import mask as mask_util

from sam3_lora.core.atomic_files import atomic_write_json
from sam3_lora.core.errors import UserError
from sam3_lora.data.image_decode import ImageModeError, open_rgb
from sam3_lora.sam3_compat.prompt_tokens import same_prompt_groups

MAX_LISTED = 10  # per kind of problem; the count says how many more
BORDER_TOLERANCE = 0.5  # pixels; exports often round coordinates past the border

# Every kind of error, with what the user does about it.
FIXES = {
    "unreadable annotation file": "re-export the file, or point dataset.<split>.ann_file at the right one",
    "missing top-level keys": 'a COCO file is a JSON object with the lists "images", "annotations" and "categories"',
    "empty dataset": "export at least one image and one category into the file",
    "invalid image entries": 'give each image an integer "id" (below 2**63), a "file_name" and positive integer '
    '"width" and "height"',
    "duplicate image ids": "give each image its own id (and point its annotations at the right one)",
    "invalid categories": 'give each category an integer "id" (below 2**31) and a non-empty "name" (the text prompt)',
    "duplicate category ids": "give each category its own id",
    "duplicate category names": "merge or rename the categories: the name is the text prompt, one prompt "
    "cannot mean two categories",
    "category names that are one prompt": "merge or rename them: sam3's tokenizer lowercases, collapses whitespace "
    "and keeps the first 30 tokens, so these names give the model the same prompt",
    "invalid annotation entries": 'give each annotation an integer "id" (unique), "image_id" and "category_id"',
    "duplicate annotation ids": "give each annotation its own id",
    "annotations of unknown images": 'correct the image_id, add the image to "images", or delete the annotation',
    "unknown category ids": 'correct the category_id, or add the category to "categories"',
    "missing or invalid iscrowd": 'set "iscrowd": 0 on each annotation (1 for crowd regions)',
    "missing or undecodable images": "restore or re-export the image (or correct file_name, width, height in the "
    "JSON), or delete the image and its annotations; file_name is relative to dataset.<split>.img_folder",
}


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
        assert kind in FIXES, kind  # every error kind says how to fix it
        self.errors[kind].append(message)

    def repair(self, kind: str, message: str) -> None:
        self.repaired[kind] += 1
        if len(self.examples[kind]) < 3:
            self.examples[kind].append(message)

    def repairs(self) -> str:
        """One line: what was repaired or dropped, with counts (empty when nothing was)."""
        return "; ".join(f"{kind}: {count}" for kind, count in self.repaired.items())

    def summary(self) -> str:
        lines = [f"{self.ann_file}: {self.num_images} images, {self.num_annotations} annotations"]
        for kind, messages in self.errors.items():
            lines.append(f"  ERROR {kind} ({len(messages)}) - fix: {FIXES[kind]}")
            lines += [f"    - {m}" for m in messages[:MAX_LISTED]]
            if len(messages) > MAX_LISTED:
                lines.append(f"    ... and {len(messages) - MAX_LISTED} more")
        for kind, count in self.repaired.items():
            lines.append(f"  repaired/skipped {kind}: {count} (e.g. {'; '.join(self.examples[kind])})")
        return "\n".join(lines)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_id(v, bits: int = 64) -> bool:
    """An integer id sam3 can carry: it stores image ids as int64, category ids as int32."""
    return _is_int(v) and -(2 ** (bits - 1)) <= v < 2 ** (bits - 1)


def _is_number(v) -> bool:
    """A finite JSON number (booleans are not numbers here, though Python says so)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer beyond float range
        return False


def _has_mask(seg) -> bool:
    """Whether an annotation carries a mask at all: ``[]``, ``null`` or no key mean box-only."""
    return seg is not None and seg != []


def _rle_string_counts(counts: str) -> Optional[List[int]]:
    """The run lengths of a compressed COCO RLE string (the inverse of pycocotools' rleToString),
    or None when the string is not one. pycocotools decodes without checking that the runs fit
    the image (a crafted string writes past its buffer) and exposes no way to read them, hence
    this reader: a valid mask's runs are non-negative and sum to height x width."""
    runs: List[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            if p >= len(counts):
                return None
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def _valid_rle(seg: dict, h: int, w: int) -> bool:
    size = seg.get("size")
    if "counts" not in seg or not (isinstance(size, list) and all(map(_is_int, size)) and size == [h, w]):
        return False
    counts = seg["counts"]
    if isinstance(counts, str):
        counts = _rle_string_counts(counts)
    elif not (isinstance(counts, list) and all(_is_int(c) for c in counts)):
        return False
    return counts is not None and all(c >= 0 for c in counts) and sum(counts) == h * w


def _clip_polygon(xy: List[float], w: int, h: int) -> List[float]:
    """The part of a polygon inside [0, w] x [0, h] (Sutherland-Hodgman against the image's
    four edges). pycocotools clips only while rasterising, after allocating points along the
    whole outline: a polygon reaching far outside would exhaust memory there."""
    points = list(zip(xy[0::2], xy[1::2], strict=True))
    for axis, limit, keep_below in ((0, 0.0, False), (0, float(w), True), (1, 0.0, False), (1, float(h), True)):
        inside = [(p[axis] <= limit) if keep_below else (p[axis] >= limit) for p in points]
        clipped = []
        for i, point in enumerate(points):
            prev = points[i - 1]
            if inside[i] != inside[i - 1]:  # the edge crosses the line: keep the crossing
                t = (limit - prev[axis]) / (point[axis] - prev[axis])
                crossing = [prev[0] + t * (point[0] - prev[0]), prev[1] + t * (point[1] - prev[1])]
                crossing[axis] = limit
                clipped.append(tuple(crossing))
            if inside[i]:
                clipped.append(point)
        points = clipped
    return [round(c, 2) for p in points for c in p]


def _clean_segmentation(seg, w: int, h: int, report: ValidationReport, where: str) -> Tuple[object, bool]:
    """``(segmentation, clipped)``: the annotation's segmentation made valid for sam3 and COCOeval
    (None when nothing usable is left, reported), and whether polygons were clipped to the image."""
    if isinstance(seg, dict):
        if _valid_rle(seg, h, w):
            return seg, False
        report.repair("invalid segmentation (removed, box kept)", f"{where}: RLE {str(seg)[:60]} for a {w}x{h} image")
        return None, False
    if not isinstance(seg, list):
        report.repair("invalid segmentation (removed, box kept)", f"{where}: {str(seg)[:60]}")
        return None, False
    polygons, clipped = [], False
    for part in seg:
        if not (isinstance(part, list) and len(part) >= 6 and len(part) % 2 == 0 and all(map(_is_number, part))):
            report.repair("invalid polygon parts (removed)", f"{where}: {str(part)[:60]}")
            continue
        xs, ys = part[0::2], part[1::2]
        t = BORDER_TOLERANCE
        if min(xs) < -t or min(ys) < -t or max(xs) > w + t or max(ys) > h + t:
            part = _clip_polygon(part, w, h)
            clipped = True
        if len(part) >= 6 and all(map(math.isfinite, part)):
            polygons.append(part)
    if clipped:
        report.repair("segmentation partly outside the image (clipped)", f"{where}: in a {w}x{h} image")
    if not polygons:
        report.repair("invalid segmentation (removed, box kept)", f"{where}: no polygon inside the image")
        return None, clipped
    return polygons, clipped


def _mask_rle(seg, w: int, h: int):
    """The pycocotools RLE of a cleaned segmentation (polygons merged into one mask)."""
    if isinstance(seg, list):
        return mask_util.merge(mask_util.frPyObjects(seg, h, w))
    return mask_util.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg


def _clip_box(box, w: int, h: int) -> Tuple[Optional[List[float]], str]:
    """``(box, what)``: the box clipped to the image (``what`` "" when unchanged, "clipped"), or
    ``(None, why)`` when it is unusable: "invalid", "zero-size" or "outside the image"."""
    if not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box))):
        return None, "invalid"
    x, y, bw, bh = box
    if bw <= 0 or bh <= 0:
        return None, "zero-size"
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + bw, w), min(y + bh, h)
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return None, "outside the image"
    t = BORDER_TOLERANCE
    if x < -t or y < -t or x + bw > w + t or y + bh > h + t:
        return [round(v, 2) for v in (x0, y0, x1 - x0, y1 - y0)], "clipped"
    return list(box), ""


def _boxes_overlap(a, b) -> bool:
    return min(a[0] + a[2], b[0] + b[2]) > max(a[0], b[0]) and min(a[1] + a[3], b[1] + b[3]) > max(a[1], b[1])


def _clean_annotation(ann: dict, im: dict, report: ValidationReport, where: str) -> Optional[dict]:
    """The annotation with box, mask and area consistent and valid (repairs reported), or None
    when nothing of it is in the image."""
    w, h = im["width"], im["height"]
    fixed = dict(ann)
    seg, clipped = (None, False)
    if _has_mask(ann.get("segmentation")):
        seg, clipped = _clean_segmentation(ann["segmentation"], w, h, report, where)
    rle = _mask_rle(seg, w, h) if seg is not None else None
    if rle is not None and int(mask_util.area(rle)) == 0:
        report.repair("segmentation covers no pixel (removed, box kept)", f"{where}: {str(seg)[:60]}")
        seg = rle = None

    box, what = _clip_box(ann.get("bbox"), w, h)
    if box is None and rle is not None:
        box = [round(float(v), 2) for v in mask_util.toBbox(rle)]
        report.repair(f"bbox {what} (taken from the mask)", f"{where}: bbox {str(ann.get('bbox'))[:40]} -> {box}")
    elif box is None:
        report.repair(f"bbox {what}, no mask (annotation dropped)", f"{where}: bbox {str(ann.get('bbox'))[:40]}")
        return None
    elif what == "clipped":
        report.repair("bbox partly outside the image (clipped)", f"{where}: {ann['bbox']} -> {box}")
    fixed["bbox"] = box
    if rle is not None and not _boxes_overlap(box, mask_util.toBbox(rle).tolist()):
        report.repair("segmentation outside its box (removed, box kept)", f"{where}: bbox {box}")
        seg = rle = None

    if seg is None:
        if _has_mask(ann.get("segmentation")):
            fixed.pop("segmentation")
    else:
        fixed["segmentation"] = seg
    area = ann.get("area")
    if not (_is_number(area) and area >= 0):
        report.repair("missing or invalid area (computed)", f"{where}: area {str(area)[:40]}")
    if not (_is_number(area) and area >= 0) or clipped or what == "clipped":
        # COCOeval sorts objects into small / medium / large by this area
        fixed["area"] = round(float(mask_util.area(rle)) if rle is not None else box[2] * box[3], 2)
    return fixed


def _check_image(path: Path, width: int, height: int) -> Optional[str]:
    """What is wrong with an image file, decoded exactly as training will (None: nothing)."""
    try:
        if not path.is_file():
            return "file not found"
        size = open_rgb(path).size  # decodes every pixel: a truncated file fails here, not mid-training
    except ImageModeError as e:
        return str(e).split(": ", 1)[-1]
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"cannot be decoded ({e})"
    if size != (width, height):
        turned = " as displayed (its EXIF orientation turns it)" if size == (height, width) else ""
        return f"is {size[0]}x{size[1]}{turned} but the JSON says {width}x{height}"
    return None


def _load_json(ann_path: Path, report: ValidationReport) -> Optional[dict]:
    problem = None
    try:
        coco = json.loads(ann_path.read_bytes().decode("utf-8"))
    except OSError as e:
        problem = f"{ann_path} cannot be read ({e.strerror or e})"
    except UnicodeDecodeError as e:
        problem = f"{ann_path} is not UTF-8 text (byte {e.start}): not a JSON file"
    except json.JSONDecodeError as e:
        problem = f"{ann_path} line {e.lineno} column {e.colno}: malformed JSON ({e.msg})"
    except RecursionError:
        problem = f"{ann_path} is nested too deeply to be a COCO file"
    if problem:
        report.error("unreadable annotation file", problem)
        return None
    lists = ("images", "annotations", "categories")
    missing = [k for k in lists if not isinstance(coco, dict) or not isinstance(coco.get(k), list)]
    if missing:
        report.error("missing top-level keys", f"{ann_path} lacks list(s) {missing}")
        return None
    return coco


def _index_images(coco: dict, report: ValidationReport) -> Dict[int, dict]:
    images: Dict[int, dict] = {}
    # PIL refuses to open larger images (a decompression bomb), unless the limit was lifted
    limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else math.inf
    for i, im in enumerate(coco["images"]):
        if not isinstance(im, dict):
            report.error("invalid image entries", f"images[{i}] is {str(im)[:40]}, not an object")
            continue
        ident = f"image id {str(im.get('id', '?'))[:40]} (images[{i}])"
        size = (im.get("width"), im.get("height"))
        if not _is_id(im.get("id")):
            report.error("invalid image entries", f"{ident}: id must be a 64-bit integer")
        elif not (isinstance(im.get("file_name"), str) and im["file_name"].strip()):
            report.error("invalid image entries", f"{ident}: file_name {str(im.get('file_name'))[:40]!r}")
        elif not (all(map(_is_int, size)) and min(size) > 0 and size[0] * size[1] <= limit):
            report.error("invalid image entries", f"{ident}: width x height {size[0]!r} x {size[1]!r}")
        elif im["id"] in images:
            report.error("duplicate image ids", f"image id {im['id']} appears more than once")
        else:
            images[im["id"]] = im
    return images


def _index_categories(coco: dict, report: ValidationReport) -> Dict[int, dict]:
    categories: Dict[int, dict] = {}
    names: Dict[str, int] = {}
    for i, cat in enumerate(coco["categories"]):
        if not (isinstance(cat, dict) and _is_id(cat.get("id"), bits=32)):
            report.error("invalid categories", f"categories[{i}] {str(cat)[:60]}: no 32-bit integer id")
        elif not (isinstance(cat.get("name"), str) and cat["name"].strip()):
            report.error("invalid categories", f"category id {cat['id']}: name {str(cat.get('name'))[:40]!r}")
        elif cat["id"] in categories:
            report.error("duplicate category ids", f"category id {cat['id']} appears more than once")
        elif cat["name"].strip() in names:
            report.error(
                "duplicate category names", f"categories {names[cat['name'].strip()]} and {cat['id']}: {cat['name']!r}"
            )
        else:
            categories[cat["id"]] = cat
            names[cat["name"].strip()] = cat["id"]
    for group in same_prompt_groups(names):
        ids = ", ".join(f"{names[n]} {n!r}" for n in group)
        report.error("category names that are one prompt", f"categories {ids}: sam3's tokenizer reads them alike")
    return categories


def validate_split(ann_file, img_folder, check_images: bool = True) -> Tuple[ValidationReport, Optional[dict]]:
    """Return the report and, when annotations were repaired, the cleaned COCO dict."""
    report = ValidationReport(str(ann_file))
    ann_path, img_folder = Path(ann_file), Path(img_folder)
    if not ann_path.is_file():
        report.error("unreadable annotation file", f"{ann_path} does not exist; set dataset.<split>.ann_file")
        return report, None
    coco = _load_json(ann_path, report)
    if coco is None:
        return report, None
    images = _index_images(coco, report)
    categories = _index_categories(coco, report)
    report.num_images, report.num_annotations = len(coco["images"]), len(coco["annotations"])
    if not coco["images"] or not coco["categories"]:
        report.error(
            "empty dataset", f"{ann_path} has {len(coco['images'])} images, {len(coco['categories'])} categories"
        )

    if check_images:
        for im in images.values():
            path = img_folder / im["file_name"]
            problem = _check_image(path, im["width"], im["height"])
            if problem:
                report.error("missing or undecodable images", f"image id {im['id']}: {path} {problem}")

    cleaned, changed, ann_ids = [], False, set()
    for i, ann in enumerate(coco["annotations"]):
        if not isinstance(ann, dict):
            report.error("invalid annotation entries", f"annotations[{i}] is {str(ann)[:40]}, not an object")
            continue
        where = f"annotation id {str(ann.get('id', '?'))[:40]} (image {str(ann.get('image_id', '?'))[:40]})"
        if not _is_id(ann.get("id")):
            report.error("invalid annotation entries", f"annotations[{i}]: id {str(ann.get('id'))[:40]!r}")
            continue
        if ann["id"] in ann_ids:
            report.error("duplicate annotation ids", f"annotation id {ann['id']} appears more than once")
            continue
        ann_ids.add(ann["id"])
        if not _is_id(ann.get("image_id")) or ann["image_id"] not in images:
            report.error("annotations of unknown images", f"{where}: no image with id {ann.get('image_id')!r}")
            continue
        if not _is_id(ann.get("category_id")) or ann["category_id"] not in categories:
            report.error(
                "unknown category ids",
                f"{where}: category_id {ann.get('category_id')!r} is not in categories {sorted(categories)}",
            )
            continue
        if ann.get("iscrowd") not in (0, 1):
            value = f"iscrowd {ann['iscrowd']!r}" if "iscrowd" in ann else "no iscrowd"
            report.error("missing or invalid iscrowd", f"{where}: {value}")
            continue
        if report.errors:  # the run stops anyway: only look for more errors
            continue
        fixed = _clean_annotation(ann, images[ann["image_id"]], report, where)
        changed |= fixed != ann
        if fixed is not None:
            cleaned.append(fixed)
    return report, (dict(coco, annotations=cleaned) if changed and not report.errors else None)


def cleaned_path(out_dir, split: str) -> Path:
    """Where ``validate_and_clean`` writes a split's repaired annotations (when it repairs any)."""
    return Path(out_dir) / f"{split}_cleaned.coco.json"


def validate_and_clean(
    ann_file, img_folder, out_dir: Path, split: str, check_images: bool = True
) -> Tuple[str, ValidationReport]:
    """Validate one split; raise on errors; return the annotation file to train from."""
    report, cleaned = validate_split(ann_file, img_folder, check_images)
    if report.errors:
        raise DataValidationError(split_problems(split, report))
    return usable_annotations(ann_file, cleaned, out_dir, split), report


def split_problems(split: str, report: ValidationReport) -> str:
    return f"dataset split '{split}' cannot be used:\n{report.summary()}"


def usable_annotations(ann_file, cleaned: Optional[dict], out_dir: Path, split: str) -> str:
    """The annotation file to use: ``ann_file`` itself, or the ``cleaned`` annotations written to
    ``out_dir`` when validation repaired any."""
    if cleaned is None:
        return str(ann_file)
    out = cleaned_path(out_dir, split)
    atomic_write_json(out, cleaned, indent=None)  # a crash never leaves half a file
    return str(out)
