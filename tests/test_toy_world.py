"""Toy world v5 (sam3_lora/data/toy_world.py): a concept is its shape, never its colour (every
(concept, colour) pair in every split, at least min_per_pair times); the target holds known concepts
under the base's own labels and new ones; held-out splits prompt absent concepts and share no image
with training; the same arguments give the same bytes."""

import hashlib
import json
from pathlib import Path

import pytest

from sam3_lora.data import toy_world as tw
from sam3_lora.data.validate import validate_split

SPLITS = {"train": 40, "valid": 16, "test": 24}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_world")
    for domain in ("base", "target"):
        tw.generate(root / domain, domain, seed=0, splits=SPLITS)
    return root


def _coco(root, domain, split):
    return json.loads((root / domain / split / tw.ANNOTATIONS).read_text())


@pytest.mark.parametrize("domain", ["base", "target"])
@pytest.mark.parametrize("split", list(SPLITS))
def test_every_concept_comes_in_every_colour_in_every_split(world, domain, split):
    counts = tw.pair_counts(_coco(world, domain, split))
    pairs = {(c, k) for c in tw.DOMAIN_CONCEPTS[domain] for k in tw.COLOURS[domain]}
    assert set(counts) == pairs and min(counts.values()) >= 5
    # balanced: no colour goes with one concept more than with another
    assert len(set(counts.values())) == 1
    if domain == "base":
        assert len(tw.DOMAIN_CONCEPTS["base"]) >= 12


def test_the_target_labels_known_concepts_as_the_base_does_and_adds_new_ones(world):
    base = {c["name"]: c["id"] for c in _coco(world, "base", "train")["categories"]}
    target = {c["name"]: c["id"] for c in _coco(world, "target", "train")["categories"]}
    known = set(base) & set(target)
    assert known == set(tw.KNOWN_IN_TARGET) and all(base[n] == target[n] for n in known)
    assert set(target) - set(base) == set(tw.NEW_CONCEPTS)
    # the target's colours are none of the base's: a concept known by colour would not transfer
    assert not set(tw.COLOURS["base"].values()) & set(tw.COLOURS["target"].values())


@pytest.mark.parametrize("domain", ["base", "target"])
def test_held_out_splits_prompt_absent_concepts_and_share_no_image_with_training(world, domain):
    def digests(split):
        folder = world / domain / split
        return {hashlib.sha256((folder / im["file_name"]).read_bytes()).hexdigest() for im in _coco(world, domain, split)["images"]}

    train = digests("train")
    for split in ("valid", "test"):
        coco = _coco(world, domain, split)
        listed = {c["name"] for c in coco["categories"]}
        shown = {c["name"] for c in coco["categories"] if any(a["category_id"] == c["id"] for a in coco["annotations"])}
        assert listed == set(tw.CATEGORIES) and listed - shown  # concepts asked of images that lack them
        assert not digests(split) & train
    other = "target" if domain == "base" else "base"
    assert not train & {hashlib.sha256(p.read_bytes()).hexdigest() for p in (world / other).rglob("*.png")}


@pytest.mark.parametrize("domain", ["base", "target"])
def test_the_splits_pass_the_projects_validator_untouched(world, domain):
    for split in SPLITS:
        report, repaired = validate_split(world / domain / split / tw.ANNOTATIONS, world / domain / split)
        assert not report.errors and repaired is None, report.summary()


def test_the_same_arguments_give_the_same_bytes(tmp_path):
    a, b = (tw.generate(tmp_path / n, "target", seed=3, splits={"train": 6, "valid": 0, "test": 0}) for n in "ab")
    files = sorted(p.relative_to(a) for p in Path(a).rglob("*") if p.is_file())
    assert files and all((Path(a) / f).read_bytes() == (Path(b) / f).read_bytes() for f in files)
    other = tw.generate(tmp_path / "c", "target", seed=4, splits={"train": 6, "valid": 0, "test": 0})
    assert (Path(other) / "train" / tw.ANNOTATIONS).read_bytes() != (Path(a) / "train" / tw.ANNOTATIONS).read_bytes()
