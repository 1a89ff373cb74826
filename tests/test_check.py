"""`python -m sam3_lora.check`: the quick-start readiness checks."""

import json

from sam3_lora.check import main


def test_not_ready_without_checkpoint_and_data(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] base checkpoint: SAM3 checkpoint not found" in out
    assert "[FAIL] data: train: No training data at 'data/train/_annotations.coco.json' (needed)" in out
    assert "[ok] Python 3.10-3.12" in out and "CUDA" in out


def test_ready_for_the_quickstart(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["experiment=quickstart"]) == 0
    assert "ready: python -m sam3_lora.train experiment=quickstart" in capsys.readouterr().out


def test_data_problems_are_listed(capsys, tmp_path, toy_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    coco = json.loads((toy_root / "train" / "_annotations.coco.json").read_text())
    coco["annotations"][0]["category_id"] = 42
    (bad / "_annotations.coco.json").write_text(json.dumps(coco))
    rc = main(
        [
            "model=sam3_tiny",
            f"dataset.train.ann_file={bad}/_annotations.coco.json",
            f"dataset.train.img_folder={toy_root}/train",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 1 and "[FAIL] data: train" in out and "category_id 42" in out


def test_invalid_settings_are_not_ready(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["experiment=quickstart", "trainer.batch_size=0", "optimizer.lr=-1"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] settings" in out and "trainer.batch_size=0" in out and "optimizer.lr=-1" in out
