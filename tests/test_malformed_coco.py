"""Property test: malformed COCO JSON either validates into data that sam3's loader and
COCOeval both accept (every repair counted, nothing dropped silently), or stops with a
clean ``UserError`` naming the file. Nothing may end in any other exception.

Cases are seeded mutations of a real toy split (polygons, compressed and uncompressed
RLE, a crowd region, a box-only annotation): fields deleted, values replaced by values of
other types, list entries deleted or duplicated, an image or category renumbered together
with every reference to it.
"""

import copy
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from sam3_lora.core.errors import UserError
from sam3_lora.data import toy
from sam3_lora.data.config import Split
from sam3_lora.data.sam3_dataset import build_dataset, build_loader
from sam3_lora.data.validate import validate_and_clean, validate_split
from sam3_lora.evaluation.coco_ap import coco_evaluate

NUM_CASES = 300
OTHER_VALUES = (
    None,
    True,
    0,
    -1,
    2.5,
    1e12,
    10**30,
    math.nan,
    math.inf,
    "",
    "x",
    "0",
    [],
    [0],
    [1, 2, 3],
    [[1, 2, 3]],
    {},
    {"counts": "x", "size": [1, 1]},
)
ODD_IDS = (0, -5, 2**62, 2**63, 10**30)


def _rle(mask: np.ndarray, compressed: bool) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    if compressed:
        return {"size": rle["size"], "counts": rle["counts"].decode()}
    flat = mask.flatten(order="F")
    runs = np.diff(np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]]))
    return {"size": rle["size"], "counts": ([0] if flat[0] else []) + runs.tolist()}  # runs start with zeros


@pytest.fixture(scope="module")
def base_split(tmp_path_factory):
    """A real toy split with every kind of annotation sam3_lora accepts, valid as it stands."""
    root = toy.generate(tmp_path_factory.mktemp("malformed"), "base", seed=1, size=64, splits={"train": 3})
    folder = root / "train"
    coco = json.loads((folder / toy.ANNOTATIONS).read_text())
    anns = coco["annotations"]
    for ann, compressed in zip(anns[:2], (True, False), strict=True):
        h = w = 64
        mask = mask_util.decode(mask_util.merge(mask_util.frPyObjects(ann["segmentation"], h, w)))
        ann["segmentation"] = _rle(mask, compressed)
    assert any(isinstance(a["segmentation"], list) for a in anns)  # polygons too
    crowd = np.zeros((64, 64), np.uint8)
    crowd[:16, :16] = 1
    anns.append(dict(anns[0], id=100, iscrowd=1, bbox=[0, 0, 16, 16], area=256, segmentation=_rle(crowd, True)))
    anns.append(dict(anns[0], id=101, segmentation=[]))  # box-only
    path = tmp_path_factory.mktemp("base") / "ann.json"
    path.write_text(json.dumps(coco))
    report, cleaned = validate_split(path, folder)
    assert not report.errors and not report.repaired and cleaned is None
    return coco, folder


def _paths(node, prefix=()):
    """Every position in the JSON tree, as a tuple of keys and indices."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield prefix + (key,)
        yield from _paths(child, prefix + (key,))


def _shape(path):
    return tuple("*" if isinstance(k, int) else k for k in path)


def _renumber(coco: dict, rng: random.Random) -> str:
    """Give an image or a category an odd id, and every annotation pointing at it the same."""
    entries, ref = rng.choice((("images", "image_id"), ("categories", "category_id")))
    if not (isinstance(coco.get(entries), list) and coco[entries] and isinstance(coco[entries][0], dict)):
        return "renumber: nothing"
    old, new = coco[entries][0].get("id"), rng.choice(ODD_IDS)
    coco[entries][0]["id"] = new
    annotations = coco.get("annotations")
    for ann in annotations if isinstance(annotations, list) else []:
        if isinstance(ann, dict) and ann.get(ref) == old:
            ann[ref] = new
    return f"renumber {entries}[0] {old!r} -> {new!r}"


def mutate(coco: dict, rng: random.Random):
    """1-3 random deletions, type changes, duplications or renumberings; returns the case and
    what was done."""
    coco = copy.deepcopy(coco)
    done = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        if rng.random() < 0.1:
            done.append(_renumber(coco, rng))
            continue
        by_shape = {}
        for path in _paths(coco):
            by_shape.setdefault(_shape(path), []).append(path)
        if not by_shape:
            break
        # pick a kind of position first, so polygon coordinates do not crowd out everything else
        path = rng.choice(by_shape[rng.choice(sorted(by_shape, key=str))])
        parent = coco
        for key in path[:-1]:
            parent = parent[key]
        key, op = path[-1], rng.choice(("delete", "retype", "retype", "duplicate"))
        if op == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
        elif op == "delete" or op == "duplicate":
            op = "delete"
            del parent[key]
        else:
            parent[key] = copy.deepcopy(rng.choice(OTHER_VALUES))
        done.append(f"{op} {'/'.join(map(str, path))}" + (f" = {parent[key]!r}"[:60] if op == "retype" else ""))
    return coco, done


def _fake_detections(coco: dict, rng: random.Random):
    """A detection on every ground-truth box (with the box as its mask) and one false positive."""
    sizes = {im["id"]: (im["height"], im["width"]) for im in coco["images"]}
    detections = []
    for ann in coco["annotations"]:
        h, w = sizes[ann["image_id"]]
        x, y, bw, bh = ann["bbox"]
        rle = mask_util.frPyObjects([[x, y, x + bw, y, x + bw, y + bh, x, y + bh]], h, w)[0]
        rle["counts"] = rle["counts"].decode()
        detections.append(
            {"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": [x, y, bw, bh],
             "score": rng.random(), "segmentation": rle}
        )  # fmt: skip
    image = coco["images"][0]
    h, w = image["height"], image["width"]
    rle = mask_util.frPyObjects([[0, 0, 8, 0, 8, 8, 0, 8]], h, w)[0]
    rle["counts"] = rle["counts"].decode()
    detections.append(
        {"image_id": image["id"], "category_id": coco["categories"][0]["id"], "bbox": [0, 0, 8, 8], "score": 0.5,
         "segmentation": rle}
    )  # fmt: skip
    return detections


def _accepted_downstream(ann_file: str, folder, original: dict, rng: random.Random) -> None:
    """The validated split loads through sam3's dataset (training and evaluation pipelines,
    every image exactly once) and through pycocotools' COCO and COCOeval."""
    cleaned = json.loads(Path(ann_file).read_text())
    assert len(cleaned["images"]) == len(original["images"])  # images are never dropped
    split = Split(ann_file, str(folder))
    for training in (True, False):
        ds = build_dataset(split, resolution=56, training=training, hflip=0.0, num_hard_negatives=-1)
        assert len(ds) == len(cleaned["images"])
        batches = list(build_loader(ds, batch_size=len(ds), training=training))
        assert sum(b.img_batch.shape[0] for b in batches) == len(ds)
    COCO(ann_file)  # what any pycocotools user does with the file
    metrics, per_category, _notes = coco_evaluate(ann_file, _fake_detections(cleaned, rng))
    assert set(per_category["bbox"]) == {c["name"] for c in cleaned["categories"]}
    assert all(math.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("case", range(NUM_CASES))
def test_malformed_coco_validates_into_accepted_data_or_stops_cleanly(case, base_split, tmp_path):
    coco, folder = base_split
    rng = random.Random(case)
    mutated, done = mutate(coco, rng)
    ann_file = tmp_path / "_annotations.coco.json"
    ann_file.write_text(json.dumps(mutated))  # NaN and Infinity written as JSON allows Python to
    try:
        used, report = validate_and_clean(ann_file, folder, tmp_path / "clean", "train")
    except UserError as e:
        assert str(ann_file) in str(e), (done, str(e))
        assert "Traceback" not in str(e)
        return
    # nothing changed without a word: a cleaned copy exactly when something was repaired,
    # and every annotation left out is counted as dropped
    assert (used != str(ann_file)) == bool(report.repaired), (done, report.summary())
    kept = len(json.loads(Path(used).read_text())["annotations"])
    dropped = sum(n for kind, n in report.repaired.items() if "dropped" in kind)
    assert kept + dropped == len(mutated["annotations"]), (done, report.summary())
    try:
        _accepted_downstream(used, folder, mutated, rng)
    except Exception as e:  # noqa: BLE001 - report the case that broke, with what was done to it
        raise AssertionError(f"case {case} {done} passed validation but failed downstream: {e!r}") from e
