"""COCO data: validation of every bad-input case, and sam3's pipeline on polygons, RLE and crowds."""

import json
import shutil

import numpy as np
import pytest
from conftest import compose_train, tiny_run_overrides
from PIL import Image
from pycocotools import mask as mask_util

from sam3_lora.data import toy
from sam3_lora.data.config import Split
from sam3_lora.data.sam3_dataset import HardNegativeCocoLoader, build_dataset, build_loader
from sam3_lora.data.validate import FIXES, DataValidationError, validate_and_clean, validate_split
from sam3_lora.evaluation.coco_ap import coco_evaluate
from sam3_lora.train import run


def _mask(h, w, box):
    m = np.zeros((h, w), dtype=np.uint8, order="F")
    x, y, bw, bh = box
    m[y : y + bh, x : x + bw] = 1
    return m


def _rle(h, w, box):
    rle = mask_util.encode(_mask(h, w, box))
    rle["counts"] = rle["counts"].decode()
    return rle


@pytest.fixture
def coco_dir(tmp_path):
    """Two 64x48 images, three categories; polygon, RLE and crowd annotations."""
    for name in ("a.png", "b.png"):
        Image.new("RGB", (64, 48), (40, 40, 40)).save(tmp_path / name)
    coco = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 64, "height": 48},
            {"id": 2, "file_name": "b.png", "width": 64, "height": 48},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [10, 10, 20, 20],
                "area": 400,
                "iscrowd": 0,
                "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]],
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 2,
                "bbox": [35, 5, 20, 30],
                "area": 600,
                "iscrowd": 0,
                "segmentation": _rle(48, 64, (35, 5, 20, 30)),
            },
            {
                "id": 3,
                "image_id": 2,
                "category_id": 1,
                "bbox": [0, 0, 64, 48],
                "area": 3072,
                "iscrowd": 1,
                "segmentation": _rle(48, 64, (0, 0, 64, 48)),
            },
            {"id": 4, "image_id": 2, "category_id": 2, "bbox": [5, 5, 10, 10], "area": 100, "iscrowd": 0},
        ],
    }
    (tmp_path / "_annotations.coco.json").write_text(json.dumps(coco))
    return tmp_path


def _edit(coco_dir, fn):
    path = coco_dir / "_annotations.coco.json"
    coco = json.loads(path.read_text())
    fn(coco)
    path.write_text(json.dumps(coco))
    return path


def _errors(coco_dir):
    report, _ = validate_split(coco_dir / "_annotations.coco.json", coco_dir)
    return report


def test_clean_dataset_passes(coco_dir):
    report, cleaned = validate_split(coco_dir / "_annotations.coco.json", coco_dir)
    assert not report.errors and not report.repaired and cleaned is None


def test_malformed_json_names_line_and_column(coco_dir):
    (coco_dir / "_annotations.coco.json").write_text('{"images": [\n  {"id": 1,,}\n]}')
    report = _errors(coco_dir)
    (message,) = report.errors["unreadable annotation file"]
    assert "_annotations.coco.json line 2 column" in message and "malformed JSON" in message


def test_missing_top_level_keys(coco_dir):
    _edit(coco_dir, lambda c: c.pop("categories"))
    assert "lacks list(s) ['categories']" in _errors(coco_dir).errors["missing top-level keys"][0]


def test_missing_image_names_id_and_path(coco_dir):
    (coco_dir / "b.png").unlink()
    (message,) = _errors(coco_dir).errors["missing or undecodable images"]
    assert message.startswith("image id 2:") and "b.png file not found" in message


def test_undecodable_image(coco_dir):
    (coco_dir / "a.png").write_bytes(b"not a png at all")
    (message,) = _errors(coco_dir).errors["missing or undecodable images"]
    assert "image id 1:" in message and "cannot be decoded" in message


def test_image_size_disagreeing_with_json(coco_dir):
    Image.new("RGB", (32, 48)).save(coco_dir / "a.png")
    (message,) = _errors(coco_dir).errors["missing or undecodable images"]
    assert "is 32x48 but the JSON says 64x48" in message


def test_unknown_category_id(coco_dir):
    _edit(coco_dir, lambda c: c["annotations"][0].update(category_id=7))
    (message,) = _errors(coco_dir).errors["unknown category ids"]
    assert "annotation id 1 (image 1): category_id 7 is not in categories [1, 2, 3]" == message


def test_missing_iscrowd_says_how_to_fix(coco_dir):
    _edit(coco_dir, lambda c: c["annotations"][1].pop("iscrowd"))
    report = _errors(coco_dir)
    (message,) = report.errors["missing or invalid iscrowd"]
    assert message == "annotation id 2 (image 1): no iscrowd"
    assert '"iscrowd": 0' in report.summary()  # the fix


def test_annotation_of_unknown_image_and_duplicate_ids(coco_dir):
    def edit(c):
        c["annotations"][0]["image_id"] = 99
        c["images"].append(dict(c["images"][0]))

    _edit(coco_dir, edit)
    errors = _errors(coco_dir).errors
    assert "no image with id 99" in errors["annotations of unknown images"][0]
    assert "image id 1 appears more than once" in errors["duplicate image ids"][0]


def test_boxes_outside_the_image_are_clipped_taken_from_the_mask_or_dropped_and_counted(coco_dir, tmp_path):
    def edit(c):
        c["annotations"][0].update(bbox=[50, 40, 30, 20], segmentation=[[50, 40, 80, 40, 80, 60, 50, 60]])  # partly out
        c["annotations"][1]["bbox"] = [70, 50, 5, 5]  # entirely outside; its RLE mask is inside
        c["annotations"][3]["bbox"] = [5, 5, 0, 10]  # zero width, no mask

    _edit(coco_dir, edit)
    ann_file, report = validate_and_clean(coco_dir / "_annotations.coco.json", coco_dir, tmp_path / "out", "train")
    assert report.repaired == {
        "bbox partly outside the image (clipped)": 1,
        "segmentation partly outside the image (clipped)": 1,
        "bbox outside the image (taken from the mask)": 1,
        "bbox zero-size, no mask (annotation dropped)": 1,
    }
    cleaned = {a["id"]: a for a in json.loads(open(ann_file).read())["annotations"]}
    assert sorted(cleaned) == [1, 2, 3]
    assert cleaned[1]["bbox"] == [50, 40, 14, 8]
    # box and mask agree: the polygon is clipped to the same 14x8 corner, the area recomputed from it
    mask = mask_util.decode(mask_util.merge(mask_util.frPyObjects(cleaned[1]["segmentation"], 48, 64)))
    assert list(mask_util.toBbox(mask_util.encode(mask))) == [50, 40, 14, 8] and cleaned[1]["area"] == mask.sum()
    assert cleaned[2]["bbox"] == [35, 5, 20, 30]  # the RLE mask's box
    assert ann_file.endswith("train_cleaned.coco.json")


def test_invalid_segmentation_is_removed_box_kept_and_empty_means_box_only(coco_dir, tmp_path):
    def edit(c):
        c["annotations"][0]["segmentation"] = []  # box-only, as Roboflow exports it: valid as it is
        c["annotations"][1]["segmentation"] = [[1, 2, 3]]

    _edit(coco_dir, edit)
    ann_file, report = validate_and_clean(coco_dir / "_annotations.coco.json", coco_dir, tmp_path, "train")
    assert report.repaired == {"invalid polygon parts (removed)": 1, "invalid segmentation (removed, box kept)": 1}
    cleaned = {a["id"]: a for a in json.loads(open(ann_file).read())["annotations"]}
    assert cleaned[1]["segmentation"] == [] and "segmentation" not in cleaned[2]
    assert cleaned[2]["bbox"] == [35, 5, 20, 30]


def test_errors_stop_training_with_every_problem_listed(coco_dir, tmp_path):
    def edit(c):
        c["annotations"][0]["category_id"] = 7
        c["annotations"][1].pop("iscrowd")

    _edit(coco_dir, edit)
    (coco_dir / "b.png").unlink()
    with pytest.raises(DataValidationError) as info:
        validate_and_clean(coco_dir / "_annotations.coco.json", coco_dir, tmp_path, "train")
    text = str(info.value)
    assert "dataset split 'train' cannot be used" in text
    assert (
        "unknown category ids (1)" in text
        and "missing or invalid iscrowd (1)" in text
        and "missing or undecodable images (1)" in text
    )
    for kind in ("unknown category ids", "missing or invalid iscrowd", "missing or undecodable images"):
        assert f"{kind} (1) - fix: {FIXES[kind]}" in text  # each kind of problem says how to fix it


def test_wrong_types_and_duplicates_are_errors_not_crashes(coco_dir):
    def edit(c):
        c["images"][1]["width"] = "64"
        c["categories"][2]["name"] = "cat"  # the same prompt as category 1
        c["annotations"][1]["iscrowd"] = "0"  # truthy: COCOeval would treat it as a crowd
        c["annotations"][3]["id"] = 1
        c["annotations"].append(7)

    _edit(coco_dir, edit)
    errors = _errors(coco_dir).errors
    assert errors["invalid image entries"] == ["image id 2 (images[1]): width x height '64' x 48"]
    assert errors["duplicate category names"] == ["categories 1 and 3: 'cat'"]
    assert errors["missing or invalid iscrowd"] == ["annotation id 2 (image 1): iscrowd '0'"]
    assert errors["duplicate annotation ids"] == ["annotation id 1 appears more than once"]
    assert errors["invalid annotation entries"] == ["annotations[4] is 7, not an object"]


def test_hostile_geometry_is_repaired_without_exhausting_memory(coco_dir, tmp_path):
    """An RLE whose runs overrun the image (pycocotools would write past its buffer) and a polygon
    reaching 1e12 px outside (pycocotools would allocate points along all of it)."""
    big = mask_util.encode(np.asfortranarray(np.ones((96, 64), np.uint8)))["counts"].decode()

    def edit(c):
        c["annotations"][1]["segmentation"] = {"size": [48, 64], "counts": big}
        c["annotations"][0]["segmentation"] = [[10, 10, 1e12, 10, 1e12, 30, 10, 30]]
        c["annotations"][0].pop("area")

    _edit(coco_dir, edit)
    ann_file, report = validate_and_clean(coco_dir / "_annotations.coco.json", coco_dir, tmp_path, "train")
    assert report.repaired == {
        "invalid segmentation (removed, box kept)": 1,
        "segmentation partly outside the image (clipped)": 1,
        "missing or invalid area (computed)": 1,
    }
    cleaned = {a["id"]: a for a in json.loads(open(ann_file).read())["annotations"]}
    assert cleaned[1]["segmentation"] == [[10, 10, 64.0, 10.0, 64.0, 30.0, 10, 30]] and cleaned[1]["area"] == 54 * 20
    assert "segmentation" not in cleaned[2]


def test_training_images_without_prompts_are_left_out_and_counted(coco_dir, caplog):
    split = Split(str(coco_dir / "_annotations.coco.json"), str(coco_dir))
    _edit(coco_dir, lambda c: c["annotations"].pop(1))  # image 2 keeps only the crowd and the box-only dog
    _edit(coco_dir, lambda c: c["images"].append(dict(c["images"][1], id=3)))  # an image without annotations
    with caplog.at_level("INFO", logger="sam3_lora.data"):
        ds = build_dataset(split, resolution=56, training=True, num_hard_negatives=0, hflip=0.0)
    assert len(ds) == 2 and "1 of 3 images have no annotation" in caplog.text
    _edit(coco_dir, lambda c: c.update(annotations=[]))
    with pytest.raises(DataValidationError, match="no image has a prompt to train on"):
        build_dataset(split, resolution=56, training=True, num_hard_negatives=0)


def test_segm_ap_treats_annotations_without_a_mask_as_ignore_regions(coco_dir):
    """Box-only annotations made COCOeval raise KeyError('segmentation'). A detection on one now
    neither counts nor costs for segm AP, and counts as found for bbox AP."""

    def detection(image_id, category_id, box, score):
        x, y, w, h = box
        rle = mask_util.encode(np.asfortranarray(_mask(48, 64, box)))
        return {"image_id": image_id, "category_id": category_id, "bbox": box, "score": score,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}}  # fmt: skip

    detections = [
        detection(1, 1, [10, 10, 20, 20], 0.9),  # the cat's polygon
        detection(1, 2, [35, 5, 20, 30], 0.8),  # the dog's RLE
        detection(2, 2, [5, 5, 10, 10], 0.95),  # the box-only dog, ranked first
    ]
    metrics, per_category, notes = coco_evaluate(str(coco_dir / "_annotations.coco.json"), detections)
    assert per_category["segm"]["dog"] == pytest.approx(1.0)  # not a false positive
    assert per_category["bbox"]["dog"] == pytest.approx(1.0)  # found
    assert notes == [f"segm: 1 of 4 annotations in {coco_dir / '_annotations.coco.json'} have no mask; "
                     "their boxes are ignore regions (detections there neither count nor cost)"]  # fmt: skip


def test_bad_dataset_stops_the_cli_run(coco_dir, tmp_path, toy_root):
    _edit(coco_dir, lambda c: c["annotations"][0].update(category_id=7))
    cfg = compose_train(
        [
            *tiny_run_overrides(toy_root),
            f"dataset.train.ann_file={coco_dir}/_annotations.coco.json",
            f"dataset.train.img_folder={coco_dir}",
        ]
    )
    with pytest.raises(DataValidationError, match="category_id 7"):
        run(cfg, tmp_path / "run")


def test_pipeline_reads_polygons_rle_and_drops_crowds_from_targets(coco_dir):
    split = Split(str(coco_dir / "_annotations.coco.json"), str(coco_dir))
    ds = build_dataset(split, resolution=56, training=True, num_hard_negatives=-1, hflip=0.0)
    first = ds[0]  # image 1: a polygon cat and an RLE dog
    assert first.images[0].data.shape == (3, 56, 56)
    masks = [o.segment for o in first.images[0].objects]
    assert len(masks) == 2 and all(m is not None and m.sum() > 0 for m in masks)
    assert {q.query_text for q in first.find_queries} == {"cat", "dog", "bird"}  # bird is a negative prompt
    second = ds[1]  # image 2: the crowd cat is not a target
    cat = next(q for q in second.find_queries if q.query_text == "cat")
    assert cat.object_ids_output == []
    batch = next(iter(build_loader(ds, batch_size=2, training=True)))
    assert batch.img_batch.shape == (2, 3, 56, 56)


def test_hard_negatives_are_limited_to_the_configured_count(coco_dir):
    loader = HardNegativeCocoLoader(str(coco_dir / "_annotations.coco.json"), num_hard_negatives=1)
    queries, _ = loader.loadQueriesAndAnnotationsFromDatapoint(1)  # image 2 has only a crowd cat and a dog
    positives = [q for q in queries if q["object_ids_output"]]
    assert len(queries) == len(positives) + 1
    assert [q["id"] for q in queries] == list(range(len(queries)))
    none = HardNegativeCocoLoader(str(coco_dir / "_annotations.coco.json"), num_hard_negatives=0)
    assert all(q["object_ids_output"] for q in none.loadQueriesAndAnnotationsFromDatapoint(0)[0])


def test_toy_generator_is_deterministic_and_validates(tmp_path):
    a = toy.generate(tmp_path / "a", "base", seed=3, splits={"train": 3})
    b = toy.generate(tmp_path / "b", "base", seed=3, splits={"train": 3})
    assert (a / "train" / "_annotations.coco.json").read_text() == (b / "train" / "_annotations.coco.json").read_text()
    assert (a / "train" / "train_0001.png").read_bytes() == (b / "train" / "train_0001.png").read_bytes()
    report, cleaned = validate_split(a / "train" / "_annotations.coco.json", a / "train")
    assert not report.errors and cleaned is None
    shutil.rmtree(b)
    assert toy.ensure(a, "base", seed=3, splits={"train": 3}) == a  # cached: not regenerated


@pytest.mark.parametrize("domain", toy.DOMAINS)
def test_toy_images_depend_only_on_the_seed(domain, tmp_path):
    """Same seed, same pixels, even from another process (no unseeded randomness anywhere)."""
    import ctypes
    import subprocess
    import sys

    libc = ctypes.CDLL(None)
    for _ in range(7):  # some library drew from C's global rand() before us
        libc.rand()
    here = toy.generate(tmp_path / "here", domain, seed=5, splits={"train": 2})
    code = f"from sam3_lora.data import toy; toy.generate({str(tmp_path / 'there')!r}, {domain!r}, seed=5, splits={{'train': 2}})"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    for name in ("train_0000.png", "train_0001.png"):
        a = np.asarray(Image.open(here / "train" / name))
        b = np.asarray(Image.open(tmp_path / "there" / "train" / name))
        assert np.array_equal(a, b), name


def test_each_seed_draws_its_own_training_images_and_the_same_seed_the_same(tmp_path):
    from sam3_lora.data.config import DatasetConfig
    from sam3_lora.data.prepare import prepare_dataset
    from sam3_lora.data.train_subset import TrainSubsetError

    root = toy.generate(tmp_path / "toy", domain="shifted", seed=0, splits={"train": 30, "valid": 2})
    train = Split(str(root / "train" / toy.ANNOTATIONS), str(root / "train"))
    config = DatasetConfig(name="toy", root=str(root), train=train, valid=None, test=None, train_images=8)
    full = json.loads((root / "train" / toy.ANNOTATIONS).read_text())

    def drawn(seed, run):
        split = prepare_dataset(config, tmp_path / run, splits=("train",), data_seed=seed).split("train")
        return json.loads(open(split.ann_file).read())

    first, again, other = drawn(0, "a"), drawn(0, "b"), drawn(1, "c")
    ids = lambda coco: [im["id"] for im in coco["images"]]  # noqa: E731
    assert len(ids(first)) == 8 and ids(first) == ids(again) and ids(first) != ids(other)
    # Every annotation of a drawn image comes along, none of another; the category list is the split's.
    assert [a["id"] for a in first["annotations"]] == [a["id"] for a in full["annotations"] if a["image_id"] in ids(first)]
    assert first["categories"] == full["categories"]
    config.train_images = 31
    with pytest.raises(TrainSubsetError, match=r"dataset.train_images=31: .* has 30 images"):
        drawn(0, "d")
