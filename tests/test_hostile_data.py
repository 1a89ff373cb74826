"""Broken datasets end to end: figures are never computed on substituted or silently skipped
images, and every repair yields data that training and COCOeval both accept."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose_command, tiny_run_overrides, train_in_process

from sam3_lora import evaluate as evaluate_cmd
from sam3_lora.data.sam3_dataset import ImageLoadError

ROOT = Path(__file__).resolve().parent.parent
ANNOTATIONS = "_annotations.coco.json"


@pytest.fixture
def data(toy_root, tmp_path):
    """A private copy of the toy data (the session's copy stays intact)."""
    return Path(shutil.copytree(toy_root, tmp_path / "data"))


def _edit(path: Path, fn) -> None:
    coco = json.loads(path.read_text())
    fn(coco)
    path.write_text(json.dumps(coco))


def _eval_cfg(**values):
    return compose_command("evaluate", **values)


def test_evaluate_refuses_a_split_with_an_undecodable_image(data, tmp_path):
    """Upstream's dataset scored the next image in its place and printed AP with exit code 0."""
    broken = data / "train" / "train_0002.png"
    broken.write_bytes(b"not an image")
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONPATH": str(ROOT)}
    args = ["model=sam3_tiny", f"dataset.root={data}", "split=train", "base=true", "num_workers=0"]
    res = subprocess.run(
        [sys.executable, "-m", "sam3_lora.evaluate", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 2, out[-3000:]
    assert f"{data / 'train' / ANNOTATIONS}" in out and f"image id 3: {broken} cannot be decoded" in out
    assert "fix: restore or re-export the image" in out
    assert "Traceback" not in out and "AP50" not in out
    assert not list(tmp_path.glob("eval_*"))


def test_an_image_broken_after_validation_stops_evaluation_instead_of_being_replaced(data, tmp_path):
    """With validation off (or a file changed since), loading fails loudly, also from workers."""
    (data / "test" / "test_0001.png").write_bytes(b"\x89PNG truncated")
    cfg = _eval_cfg(
        model="sam3_tiny",
        **{"dataset.root": data, "dataset.validate.check_images": "false"},
        base="true",
        num_workers=2,
        output=tmp_path / "eval",
    )
    with pytest.raises(ImageLoadError) as info:
        evaluate_cmd.evaluate(cfg)
    message = str(info.value)
    assert message.startswith(f"{data / 'test' / ANNOTATIONS}: image id 2 ({data / 'test' / 'test_0001.png'})")
    assert "Fix: restore or re-export the image" in message
    assert "Traceback" not in message and "worker" not in message  # the worker's wrapping is taken off
    assert not (tmp_path / "eval").exists()


def test_evaluate_scores_a_repaired_copy_and_says_so(data, tmp_path):
    test_file = data / "test" / ANNOTATIONS

    def edit(coco):
        first, second, third = coco["annotations"][:3]
        x, y, w, h = first["bbox"]
        first["bbox"] = [x, y, w + 500, h]  # past the image's edge
        first["segmentation"] = [[x, y, x + w + 500, y, x + w + 500, y + h, x, y + h]]
        second["segmentation"] = []  # box-only
        third["segmentation"] = [[1, 2, 3]]  # invalid: removed, box kept

    _edit(test_file, edit)
    original = test_file.read_bytes()
    result = evaluate_cmd.evaluate(
        _eval_cfg(model="sam3_tiny", **{"dataset.root": data}, base="true", num_workers=0, output=tmp_path / "eval")
    )
    num_annotations = len(json.loads(original)["annotations"])
    data_note, segm_note, *saco_notes = result["notes"]
    assert saco_notes and all(n.startswith("SA-Co") for n in saco_notes)  # where the threshold came from, etc.
    assert data_note.startswith(f"data: scored on a repaired copy of {test_file} (")
    for repair in (
        "bbox partly outside the image (clipped): 1",
        "segmentation partly outside the image (clipped): 1",
        "invalid segmentation (removed, box kept): 1",
    ):
        assert repair in data_note
    assert segm_note.startswith(f"segm: 2 of {num_annotations} annotations in ")
    assert "ignore regions" in segm_note
    assert result["ann_file"] == str(test_file) and result["num_images"] == 4
    text = (tmp_path / "eval" / "eval_test_base.txt").read_text()
    assert f"note: {data_note}" in text and f"note: {segm_note}" in text
    assert test_file.read_bytes() == original  # the user's file is never modified
    assert not list(data.rglob("*cleaned*")) and not list((tmp_path / "eval").glob("*cleaned*"))


def test_training_evaluates_repaired_valid_and_test_splits(data, tmp_path):
    """Empty and invalid segmentations in valid/test made COCOeval raise KeyError('segmentation')
    after the first epoch (nothing saved) or while scoring the frozen base."""

    def edit(coco):
        first, second, third = coco["annotations"][:3]
        first["segmentation"] = []
        second["segmentation"] = [[5, 5, 6, 6]]
        x, y, w, h = third["bbox"]
        third["bbox"] = [x - 200, y, w + 200, h]
        third["segmentation"] = [[x - 200, y, x + w, y, x + w, y + h, x - 200, y + h]]

    for split in ("valid", "test"):
        _edit(data / split / ANNOTATIONS, edit)
    run_dir = tmp_path / "run"
    summary = train_in_process(tiny_run_overrides(data, "final_eval.compare_base=true"), run_dir)
    for key in ("base", "lora"):
        assert 0 <= summary["results"][key]["segm/AP"] <= 1 and 0 <= summary["results"][key]["bbox/AP"] <= 1
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    cleaned = json.loads((run_dir / "data" / "test_cleaned.coco.json").read_text())
    third = cleaned["annotations"][2]
    assert third["bbox"][0] == 0 and min(third["segmentation"][0][0::2]) == 0  # box and polygon clipped alike
