"""Retention on real data: ``retention=coco_val2017`` (COCO's own layout, scored on the shipped val2017
subsets), ``preserve=coco_anchors`` (the other val2017 images, asked about the shipped ``coco80``), and the
overlap check between them — on generated data laid out as COCO (annotations/instances_val2017.json beside
val2017/, every val2017 id an image of its own bytes), no real COCO needed."""

import configparser
import fnmatch
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from conftest import compose_train, tiny_run_overrides, train_in_process
from hydra.utils import instantiate
from PIL import Image

from sam3_lora.data.anchors import AnchorError, anchor_images, refuse_scored_overlap, write_anchor_split
from sam3_lora.data.prepare import prepare_dataset
from sam3_lora.data.prompt_lists import PromptListError, read_prompt_list
from sam3_lora.data.shipped import LISTS_DIR, list_file, shipped_names
from sam3_lora.data.train_subset import ImageIdsError, read_image_ids
from sam3_lora.pipeline.settings import ConfigError, check_settings, keys_not_in_run_names
from sam3_lora.sam3_compat.prompt_tokens import same_prompt_groups
from sam3_lora.training.distill_anchors import prepare_anchors, scored_splits
from sam3_lora.training.distributed import DistInfo

ROOT = Path(__file__).resolve().parents[1]
# COCO's category ids: 1-90 with ten gaps (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def _ids(name):
    return read_image_ids(name, name)[0]


def _tool():
    spec = importlib.util.spec_from_file_location("coco_val2017_subsets", ROOT / "tools" / "coco_val2017_subsets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------- the shipped lists


def test_coco80_is_eighty_distinct_prompts_in_coco_id_order():
    names = read_prompt_list("coco80", "preserve.vocabulary")  # the bare name: the shipped file
    assert len(names) == 80 == len(set(names))  # read_prompt_list drops a name sam3 reads as an earlier one
    assert names[0] == "person" and names[-1] == "toothbrush"
    assert {"motorcycle", "airplane", "couch", "potted plant", "dining table", "tv"} <= set(names)  # 2017's names
    assert same_prompt_groups(names) == []  # sam3's tokenizer gives every name its own token ids
    assert read_prompt_list(str(LISTS_DIR / "coco80.txt"), "preserve.vocabulary") == names


def test_a_path_that_exists_is_taken_before_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("coco80").write_text("dog\n")
    assert read_prompt_list("coco80", "k") == ["dog"]
    assert list_file("coco80.txt") is None and list_file("lists/coco80") is None  # only bare names are shipped
    with pytest.raises(PromptListError, match=r"k=coco81: no such file; .*coco80, coco_val2017"):
        read_prompt_list("coco81", "k")


def test_the_shipped_lists_are_package_data():
    """``pip install`` ships every list a config names (setup.cfg's package_data), not only a checkout."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    globs = [g.strip() for g in parser["options.package_data"]["sam3_lora"].split(",")]
    for name in shipped_names():
        relative = (LISTS_DIR / f"{name}.txt").relative_to(ROOT / "sam3_lora").as_posix()
        assert any(fnmatch.fnmatch(relative, g) for g in globs), f"{relative} is not in package_data ({globs})"


def test_the_val2017_subsets_are_the_declared_rule_applied_to_val2017():
    full = _ids("coco_val2017")
    assert len(full) == 5000 == len(set(full)) and full == sorted(full)
    assert {139, 397133, 37777, 581781} <= set(full)  # the first by id and in instances_val2017.json's order; the last
    drawn = _tool().draw(full)
    shipped = {name: _ids(name) for name in drawn}
    assert shipped == drawn  # the files are what the rule in their headers gives
    names = ("coco_val2017_test500", "coco_val2017_valid250", "coco_val2017_anchors")
    test, valid, anchors = (set(shipped[n]) for n in names)
    assert (len(test), len(valid), len(anchors)) == (500, 250, 4250)
    assert not test & valid and not (test | valid) & anchors and test | valid | anchors == set(full)
    header = (LISTS_DIR / "coco_val2017_test500.txt").read_text().splitlines()[2]
    assert 'random.Random("sam3_lora/coco_val2017")' in header and "sorted(order[0:500])" in header


def test_the_tool_checks_the_list_against_an_instances_file(tmp_path, capsys):
    ann = tmp_path / "instances_val2017.json"
    ann.write_text(json.dumps({"images": [{"id": i} for i in _ids("coco_val2017")]}))
    assert _tool().check(ann) == 0
    ann.write_text(json.dumps({"images": [{"id": i} for i in _ids("coco_val2017")[1:]] + [{"id": 9}]}))
    assert _tool().check(ann) == 1 and "1 image ids not in coco_val2017.txt" in capsys.readouterr().out


# ------------------------------------------------------------------------------- the configs, composed


def test_retention_coco_val2017_reads_cocos_own_layout():
    cfg = compose_train(["retention=coco_val2017", "retention.root=/data/coco"])
    check_settings(cfg)
    retention = instantiate(cfg.retention)
    assert retention.name == "coco_val2017"
    for split, ids in (("test", "coco_val2017_test500"), ("valid", "coco_val2017_valid250")):
        spec = retention.split(split)
        assert (spec.ann_file, spec.img_folder, spec.image_ids) == (
            "/data/coco/annotations/instances_val2017.json", "/data/coco/val2017", ids
        )
    assert {"retention.test.image_ids", "preserve.image_ids"} <= set(keys_not_in_run_names())
    with pytest.raises(ConfigError, match=r"retention\.test\.image_ids"):
        check_settings(compose_train(["retention=coco_val2017", "retention.root=/x", "retention.test.image_ids=[-1]"]))


def test_coco_anchors_take_the_retention_root_and_say_so_without_one():
    cfg = compose_train(["retention=coco_val2017", "retention.root=/data/coco", "preserve=coco_anchors"])
    preserve = instantiate(cfg.preserve)
    assert preserve.images == "/data/coco/annotations/instances_val2017.json"
    assert preserve.img_folder == "/data/coco/val2017"
    assert (preserve.image_ids, preserve.vocabulary) == ("coco_val2017_anchors", "coco80")
    with pytest.raises(ConfigError, match=r"preserve\.images: cannot be resolved .*retention\.root"):
        check_settings(compose_train(["preserve=coco_anchors"]))


# --------------------------------------------------------------------- generated data in COCO's layout


def _image(image_id: int) -> Image.Image:
    """A 32x32 picture of its own: its bytes are a function of the id, no two ids alike."""
    seed = hashlib.sha256(str(image_id).encode()).digest()
    pixels = (seed * (32 * 32 * 3 // len(seed) + 1))[: 32 * 32 * 3]
    return Image.frombytes("RGB", (32, 32), pixels)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    """ROOT/annotations/instances_val2017.json and ROOT/val2017/: every val2017 id, one box each, under
    COCO's category ids (with their gaps); one crowd region; the last test image without annotations."""
    root = tmp_path_factory.mktemp("coco")
    (root / "val2017").mkdir()
    (root / "annotations").mkdir()
    names = read_prompt_list("coco80", "names")
    images, annotations = [], []
    unlabelled = _ids("coco_val2017_test500")[-1]
    for n, image_id in enumerate(_ids("coco_val2017")):
        file_name = f"{image_id:012d}.png"
        _image(image_id).save(root / "val2017" / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": 32, "height": 32})
        if image_id == unlabelled:
            continue
        annotations.append(
            {"id": n + 1, "image_id": image_id, "category_id": COCO_CATEGORY_IDS[n % 80], "bbox": [4, 4, 16, 12],
             "area": 192.0, "iscrowd": int(n == 1), "segmentation": [[4, 4, 20, 4, 20, 16, 4, 16]]}
        )
    categories = [{"id": i, "name": name, "supercategory": "thing"} for i, name in zip(COCO_CATEGORY_IDS, names)]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(coco))
    return root


@pytest.fixture(scope="module")
def retention(coco_root, tmp_path_factory):
    cfg = compose_train(["retention=coco_val2017", f"retention.root={coco_root}"])
    clean = tmp_path_factory.mktemp("run") / "data" / "retention"
    return prepare_dataset(instantiate(cfg.retention), clean, splits=("valid", "test"))


def test_only_the_listed_images_are_read_and_scored(retention, coco_root):
    for split, name, count in (("test", "coco_val2017_test500", 500), ("valid", "coco_val2017_valid250", 250)):
        ann_file = Path(retention.split(split).ann_file)
        assert ann_file.name == f"{split}_listed.coco.json"
        assert ann_file.parent.name == "retention"  # beside the run's data
        coco = json.loads(ann_file.read_text())
        assert [im["id"] for im in coco["images"]] == _ids(name)
        assert {a["image_id"] for a in coco["annotations"]} <= set(_ids(name))
        assert len(coco["categories"]) == 80  # every category still asked, so absent ones are absent-concept prompts
        assert retention.num_images(split) == count  # validation read the listed images only
        (note,) = retention.notes(split)
        assert note == (
            f"data: {split} is the {count} of 5000 images of {coco_root}/annotations/instances_val2017.json "
            f"listed in {name} ({LISTS_DIR / name}.txt)"
        )
    assert retention.heldout() == "test"


def test_ids_the_file_lacks_are_refused_by_name(coco_root, tmp_path):
    ids = "retention.test.image_ids=[139, 7, 8]"
    cfg = compose_train(["retention=coco_val2017", f"retention.root={coco_root}", ids])
    refused = r"test\.image_ids=\[139, 7, 8\]: 2 of its 3 image ids are no image of .*: 7, 8"
    with pytest.raises(ImageIdsError, match=refused):
        prepare_dataset(instantiate(cfg.retention), tmp_path, splits=("test",))
    (tmp_path / "ids.txt").write_text("# a comment\n139\n000000000285.jpg\n")
    with pytest.raises(ImageIdsError, match=r"line 3 \('000000000285.jpg'\) is not an image id"):
        read_image_ids(str(tmp_path / "ids.txt"), "k")


def test_coco_anchors_are_checked_against_every_scored_image_and_pass(coco_root, retention, tmp_path):
    cfg = compose_train(["retention=coco_val2017", f"retention.root={coco_root}", "preserve=coco_anchors"])
    preserve = instantiate(cfg.preserve)
    split = prepare_anchors(preserve, retention, None, tmp_path, DistInfo())  # retention as the scored target here
    anchors = json.loads(Path(split.ann_file).read_text())
    assert sorted(int(Path(im["file_name"]).stem) for im in anchors["images"]) == _ids("coco_val2017_anchors")
    assert [c["name"] for c in anchors["categories"]] == read_prompt_list("coco80", "names")
    assert set(scored_splits(retention, None)) == {"coco_val2017/valid", "coco_val2017/test"}


def test_an_anchor_folder_holding_a_scored_image_is_refused_by_name(coco_root, retention, tmp_path):
    folder = tmp_path / "anchors"
    folder.mkdir()
    for image_id in _ids("coco_val2017_anchors")[:5]:
        shutil.copy(coco_root / "val2017" / f"{image_id:012d}.png", folder)
    scored = scored_splits(retention, None)
    records, where = anchor_images(str(folder))
    assert refuse_scored_overlap(write_anchor_split(records, where, ["person"], tmp_path), scored) == 5

    leaked = f"{_ids('coco_val2017_test500')[3]:012d}.png"
    shutil.copy(coco_root / "val2017" / leaked, folder / "my_photo.png")  # the same bytes under another name
    records, where = anchor_images(str(folder))
    clash = rf"1 anchor image\(s\) .*my_photo\.png = .*val2017/{leaked} \(coco_val2017/test\)"
    with pytest.raises(AnchorError, match=clash):
        refuse_scored_overlap(write_anchor_split(records, where, ["person"], tmp_path), scored)

    # A listed image of the valid subset, through preserve.image_ids: refused the same way.
    valid_id = _ids("coco_val2017_valid250")[0]
    ann_file = str(coco_root / "annotations" / "instances_val2017.json")
    listed = [_ids("coco_val2017_anchors")[0], valid_id]
    records, where = anchor_images(ann_file, str(coco_root / "val2017"), image_ids=listed)
    with pytest.raises(AnchorError, match=rf"{valid_id:012d}\.png = .* \(coco_val2017/valid\)"):
        refuse_scored_overlap(write_anchor_split(records, where, ["person"], tmp_path), scored)


def test_anchor_ids_need_a_coco_file_that_has_them(coco_root, tmp_path):
    with pytest.raises(AnchorError, match=r"preserve\.image_ids=\[139\]: it picks images of a COCO annotation file"):
        anchor_images(str(coco_root / "val2017"), image_ids=[139])
    with pytest.raises(AnchorError, match=r"preserve\.image_ids=\[139, 5\]: 1 of its 2 ids are no image of .*: 5\."):
        anchor_images(str(coco_root / "annotations" / "instances_val2017.json"), image_ids=[139, 5])


# -------------------------------------------------------------------------------------- the whole run


def test_a_run_scores_the_listed_coco_images_and_distils_on_the_others(toy_root, coco_root, tmp_path):
    """The documented command on the generated COCO folder, its lists cut short (the tiny model on CPU):
    the base and the tuned model scored on the listed test images, anchors refused nowhere."""
    test_ids, valid_ids = _ids("coco_val2017_test500")[:3], _ids("coco_val2017_valid250")[:2]
    anchor_ids = _ids("coco_val2017_anchors")[:8]
    overrides = tiny_run_overrides(
        toy_root,
        "retention=coco_val2017",
        f"retention.root={coco_root}",
        f"retention.test.image_ids=[{','.join(map(str, test_ids))}]",
        f"retention.valid.image_ids=[{','.join(map(str, valid_ids))}]",
        "preserve=coco_anchors",
        f"preserve.image_ids=[{','.join(map(str, anchor_ids))}]",
        "trainer.max_epochs=1",
    )
    summary = train_in_process(overrides, tmp_path)
    kept = summary["retention"]
    assert kept["dataset"] == "coco_val2017" and kept["split"] == "test"
    assert "segm/AP" in kept["base"] and "segm/AP" in kept["tuned"]
    listed = json.loads((tmp_path / "data" / "retention" / "test_listed.coco.json").read_text())
    assert [im["id"] for im in listed["images"]] == test_ids
    assert len(json.loads((tmp_path / "anchors.coco.json").read_text())["images"]) == len(anchor_ids)
    heldout = json.loads((tmp_path / "heldout_retention.json").read_text())
    assert any("listed in dataset 'coco_val2017' test.image_ids" in n for n in heldout["base_notes"])
