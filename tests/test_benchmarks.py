"""The transfer benchmarks (sam3_lora/benchmarks/): the K-shot sampler's definition, prepare's manifest
on stand-in releases laid out as the publishers lay theirs out (a malformed or missing dataset named,
the others prepared), a run's readiness, the table's statistics against hand computations, and the
whole chain (stand-in -> prepare -> a multirun of 8 runs -> the table) end to end."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from scipy import stats

from sam3_lora.benchmarks import catalog, stand_in
from sam3_lora.benchmarks.few_shot import draw_few_shot, images_per_category
from sam3_lora.benchmarks.manifest import MALFORMED, MISSING, OK, PrepareRequest, prepare
from sam3_lora.benchmarks.run import BenchmarkRun, readiness
from sam3_lora.benchmarks.table import BASE, build, markdown, write_table

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------- the sampler
def _split(single: dict, pairs: int) -> dict:
    """A COCO training split: ``single[c]`` images showing only category c, ``pairs`` showing 1 and 2."""
    images, annotations = [], []
    for c, n in single.items():
        for _ in range(n):
            images.append({"id": len(images) + 1, "file_name": f"{len(images)}.png", "width": 8, "height": 8})
            annotations.append({"id": len(annotations) + 1, "image_id": len(images), "category_id": c})
    for _ in range(pairs):
        images.append({"id": len(images) + 1, "file_name": f"{len(images)}.png", "width": 8, "height": 8})
        for c in (1, 2):
            annotations.append({"id": len(annotations) + 1, "image_id": len(images), "category_id": c})
    images.append({"id": len(images) + 1, "file_name": "empty.png", "width": 8, "height": 8})  # no annotation
    return {"images": images, "annotations": annotations, "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]}


def test_the_sampler_holds_k_images_per_category_as_defined():
    coco = _split({1: 30, 2: 30, 3: 3}, pairs=10)
    shot = draw_few_shot(coco, 5, seed=3)
    per = images_per_category(shot)
    kept = {im["id"] for im in shot["images"]}
    only = lambda c: sum(  # noqa: E731 - images of the draw showing category c alone
        1 for i in kept if {a["category_id"] for a in shot["annotations"] if a["image_id"] == i} == {c}
    )
    # every category reaches K, or keeps all its images when it has fewer (c3: 3 < 5, recorded as short)
    assert per[1] >= 5 and per[2] >= 5 and per[3] == 3
    assert shot["info"]["few_shot"]["short"] == [3] and shot["info"]["few_shot"]["per_category"]["3"] == 3
    # an image showing one category is only kept while that category has fewer than K: at most K of them;
    # a category beyond K got there through images showing two (the documented exception)
    assert only(1) <= 5 and only(2) <= 5
    assert per[1] - only(1) == per[2] - only(2) == sum(1 for i in kept if i > 63 and i <= 73)
    # kept images keep all their annotations; the empty image is never drawn; the categories are whole
    assert {a["id"] for a in shot["annotations"]} == {a["id"] for a in coco["annotations"] if a["image_id"] in kept}
    assert "empty.png" not in {im["file_name"] for im in shot["images"]}
    assert shot["categories"] == coco["categories"]


def test_the_sampler_is_the_same_for_a_seed_and_differs_across_seeds():
    coco = _split({1: 40, 2: 40, 3: 40}, pairs=0)
    ids = lambda seed: [im["id"] for im in draw_few_shot(coco, 5, seed)["images"]]  # noqa: E731
    assert ids(3) == ids(3)
    assert len({tuple(ids(s)) for s in (3, 30, 300)}) == 3


# ------------------------------------------------------------------------------- prepare
@pytest.fixture(scope="module")
def odinw_release(tmp_path_factory):
    root = tmp_path_factory.mktemp("odinw") / "release"
    stand_in.generate("odinw13", root)
    return root


def _prepare(release, out, name="odinw13", **kw):
    return prepare(PrepareRequest(catalog.benchmark(name), Path(release), Path(out), **kw))


def _entry(manifest, name):
    return next(d for d in manifest["datasets"] if d["name"] == name)


def test_prepare_refuses_a_malformed_dataset_by_name_and_prepares_the_others(odinw_release, tmp_path):
    release = tmp_path / "release"
    shutil.copytree(odinw_release, release)
    bad = release / "Raccoon/Raccoon.v2-raw.coco/test/annotations_without_background.json"
    coco = json.loads(bad.read_text())
    coco["annotations"][0]["category_id"] = 99
    bad.write_text(json.dumps(coco))
    manifest = _prepare(release, tmp_path / "prepared", seeds=(3,))
    raccoon = _entry(manifest, "Raccoon")
    assert raccoon["status"] == MALFORMED and str(bad) in raccoon["problem"] and "category_id 99" in raccoon["problem"]
    assert raccoon["fix"]
    assert not (tmp_path / "prepared/Raccoon").exists()  # nothing of it is prepared
    for name in ("Aquarium", "pistols"):
        entry = _entry(manifest, name)
        assert entry["status"] == OK
        for split in ("train", "valid", "test", "train_shot10_seed3"):
            assert (tmp_path / f"prepared/{name}/{split}/_annotations.coco.json").is_file()
    missing = _entry(manifest, "CottontailRabbits")
    assert missing["status"] == MISSING and "CottontailRabbits/train" in missing["problem"]
    assert json.loads((tmp_path / "prepared/manifest.json").read_text()) == manifest


def test_the_manifest_lists_prompts_counts_hashes_and_the_few_shot_origin(odinw_release, tmp_path):
    import hashlib

    bench = dataclasses.replace(catalog.benchmark("odinw13"), prompts={"Aquarium": {"2": "a square fish"}})
    manifest = prepare(PrepareRequest(bench, odinw_release, tmp_path, seeds=(3, 7)))
    aquarium = _entry(manifest, "Aquarium")
    assert {c["id"]: c["prompt"] for c in aquarium["categories"]} == {1: "circle", 2: "a square fish", 3: "triangle"}
    train = json.loads(Path(aquarium["splits"]["train"]["ann_file"]).read_text())
    assert [c["name"] for c in train["categories"]] == ["circle", "a square fish", "triangle"]  # the prompt asked
    for split in aquarium["splits"].values():
        assert split["sha256"] == hashlib.sha256(Path(split["ann_file"]).read_bytes()).hexdigest()
        assert split["images"] == len(json.loads(Path(split["ann_file"]).read_text())["images"])
    published, sampled = aquarium["few_shot"]
    assert published["origin"].startswith("published: ") and "fewshot_train_shot10_seed3.json" in published["origin"]
    assert sampled["origin"] == "sampled" and sampled["seed"] == 7
    assert aquarium["has_masks"] and not _entry(manifest, "pistols")["has_masks"]  # pistols: boxes only
    # the few-shot images are training images, none of them a held-out one
    shot = json.loads(Path(sampled["ann_file"]).read_text())
    assert {im["file_name"] for im in shot["images"]} <= {im["file_name"] for im in train["images"]}


def test_a_few_shot_set_sharing_an_image_with_the_test_split_is_refused(odinw_release, tmp_path):
    release = tmp_path / "release"
    shutil.copytree(odinw_release, release)
    folder = release / "CottontailRabbits"  # not a stand-in: reuse Aquarium's files under another name
    shutil.copytree(release / "Aquarium/Aquarium Combined.v2-raw-1024.coco", folder)
    train = json.loads((folder / "train/annotations_without_background.json").read_text())
    drawn = draw_few_shot(train, 10, 5)["images"][0]["file_name"]
    test = json.loads((folder / "test/annotations_without_background.json").read_text())
    shutil.copyfile(folder / "test" / test["images"][0]["file_name"], folder / "train" / drawn)  # a leaked test image
    manifest = _prepare(release, tmp_path / "prepared", seeds=(5,), datasets=["CottontailRabbits"])
    (shot,) = _entry(manifest, "CottontailRabbits")["few_shot"]
    assert shot["status"] == MALFORMED and drawn in shot["problem"] and "held-out" in shot["problem"]


def test_rf100vl_drops_roboflows_root_class_and_matches_the_10_shot_release_by_name(tmp_path):
    stand_in.generate("rf100vl", tmp_path / "release", few_shot_root=tmp_path / "fsod")
    # the 10-shot release as rf100vl's downloader cleans it: no root class, every id shifted down by one
    fsod = tmp_path / "fsod/bees/train/_annotations.coco.json"
    coco = json.loads(fsod.read_text())
    coco["categories"] = [{**c, "id": c["id"] - 1} for c in coco["categories"] if c["id"] != 0]
    coco["annotations"] = [{**a, "category_id": a["category_id"] - 1} for a in coco["annotations"]]
    fsod.write_text(json.dumps(coco))
    manifest = _prepare(tmp_path / "release", tmp_path / "prepared", "rf100vl", few_shot_root=tmp_path / "fsod")
    bees = _entry(manifest, "bees")
    assert bees["dropped_categories"] == [0] and 0 not in {c["id"] for c in bees["categories"]}
    (shot,) = bees["few_shot"]
    assert shot["status"] == OK and shot["origin"].startswith("published")
    prepared = json.loads(Path(shot["ann_file"]).read_text())
    names = {c["id"]: c["name"] for c in prepared["categories"]}
    original = {c["id"]: c["name"] for c in coco["categories"]}
    by_id = {a["id"]: a["category_id"] for a in coco["annotations"]}
    assert all(names[a["category_id"]] == original[by_id[a["id"]]] for a in prepared["annotations"])
    assert len(manifest["datasets"]) == 100 and len(catalog.benchmark("rf100vl").names) == 100


def test_a_run_of_a_dataset_the_manifest_refuses_is_not_ready_and_says_why(odinw_release, tmp_path):
    _prepare(odinw_release, tmp_path, seeds=(3,))
    run = BenchmarkRun(name="odinw13", prepared=str(tmp_path), dataset="Aquarium", shots=10, train_split="train_shot10_seed3")
    assert readiness(run)[1]
    what, ok, detail = readiness(dataclasses.replace(run, dataset="PascalVOC"))
    assert not ok and "PascalVOC is missing" in detail and "fix:" in detail
    what, ok, detail = readiness(dataclasses.replace(run, train_split="train_shot10_seed30"))
    assert not ok and "train_shot10_seed30" in detail and "seeds=[S]" in detail


# ------------------------------------------------------------------------------- the table
def _fake_run(sweep, manifest_dir, dataset, recipe, seed, bbox, base_bbox, checkpoint="last", name="odinw13"):
    run = sweep / f"benchmark.dataset={dataset},recipe={recipe},seed={seed}"
    (run / ".hydra").mkdir(parents=True)
    config = {
        "benchmark": {"name": name, "prepared": str(manifest_dir), "dataset": dataset, "shots": 10},
        "final_eval": {"checkpoint": checkpoint},
    }
    (run / ".hydra/config.yaml").write_text(yaml.safe_dump(config))
    if bbox is None:  # started, never finished
        return
    results = {
        "results": {"base": {"bbox/AP": base_bbox}, "lora": {"bbox/AP": bbox}},
        "tuning": {"label": "lora", "config": None},
        "overrides": f"benchmark.dataset={dataset},recipe={recipe},seed={seed}",
        "seed": seed,
        "wall_time_s": 360.0,
        "world_size": 2,
        "device": "cuda",
        "trainable_parameters": 1000,
    }
    (run / "results.json").write_text(json.dumps(results))


def _t_interval(xs):
    m, s = statistics.fmean(xs), statistics.stdev(xs)
    h = stats.t.ppf(0.975, len(xs) - 1) * s / math.sqrt(len(xs))
    return m, m - h, m + h


def test_the_table_means_intervals_missing_and_failed_runs_against_hand_computations(odinw_release, tmp_path):
    _prepare(odinw_release, tmp_path / "prepared", seeds=(3,))
    sweep = tmp_path / "sweep"
    figures = {  # dataset -> recipe -> seed -> bbox AP
        "Aquarium": {"meta_full_ft": {3: 0.50, 30: 0.54, 300: 0.55}, "lora": {3: 0.40, 30: 0.47, 300: 0.45}},
        "pistols": {"meta_full_ft": {3: 0.30, 30: 0.28, 300: 0.35}, "lora": {3: 0.31, 30: 0.30}},
    }
    for dataset, by_recipe in figures.items():
        for recipe, by_seed in by_recipe.items():
            for seed, v in by_seed.items():
                _fake_run(sweep, tmp_path / "prepared", dataset, recipe, seed, v, {"Aquarium": 0.2, "pistols": 0.1}[dataset])
    _fake_run(sweep, tmp_path / "prepared", "pistols", "lora", 300, None, None)  # failed
    t = build(sweep)
    m, lo, hi = _t_interval([0.50, 0.54, 0.55])
    cell = t.cell("bbox/AP", "recipe=meta_full_ft", "Aquarium")
    assert (cell.n, cell.mean, cell.low, cell.high) == (3, pytest.approx(m), pytest.approx(lo), pytest.approx(hi))
    # the mean over datasets: per seed, then over seeds
    mean, present = t.mean_over_datasets("bbox/AP", "recipe=meta_full_ft")
    m, lo, hi = _t_interval([(0.50 + 0.30) / 2, (0.54 + 0.28) / 2, (0.55 + 0.35) / 2])
    assert present == ["Aquarium", "pistols"] and (mean.mean, mean.low) == (pytest.approx(m), pytest.approx(lo))
    # lora's seed 300 lacks pistols: that seed is not averaged into another mean
    lora_mean, _ = t.mean_over_datasets("bbox/AP", "recipe=lora")
    assert lora_mean.n == 2 and lora_mean.mean == pytest.approx(statistics.fmean([(0.40 + 0.31) / 2, (0.47 + 0.30) / 2]))
    assert t.cell("bbox/AP", BASE, "Aquarium").mean == pytest.approx(0.2)
    # paired over datasets against Meta's recipe, each dataset's mean over its seeds
    d = t.paired_over_datasets("bbox/AP", "recipe=lora", "recipe=meta_full_ft")
    diffs = [statistics.fmean([0.40, 0.47, 0.45]) - statistics.fmean([0.50, 0.54, 0.55]), 0.305 - statistics.fmean([0.30, 0.28, 0.35])]
    assert d.summary.n == 2 and d.summary.mean == pytest.approx(statistics.fmean(diffs))
    md = markdown(t)
    assert "pistols, recipe=lora, seed 300" in md  # the missing run, by name
    assert "recipe=lora,seed=300: no results.json" in md  # the failed one
    assert "Raccoon" in md and "Raccoon | — |" in md  # prepared, never run: shown, not averaged
    assert "CottontailRabbits: missing" in md  # not prepared
    assert "recipe=meta_full_ft (last)" in md and "| 71.8 ± 0.4 |" in md  # the scored model; the paper's own figure
    assert "| recipe=lora | 1,000 | 1.000 GPU-h |" in md  # 5 finished runs x 360 s x 2 GPUs
    assert f"mean over 2 of 13 datasets** | 15.0 (n=1) | {100 * statistics.fmean([0.8 / 2, 0.82 / 2, 0.9 / 2]):.1f}" in md


def test_the_table_gives_rf100vl_its_super_category_means(tmp_path):
    stand_in.generate("rf100vl", tmp_path / "release")
    _prepare(tmp_path / "release", tmp_path / "prepared", "rf100vl", shots=())
    sweep = tmp_path / "sweep"
    for dataset, v in (("aquarium-combined", 0.6), ("bees", 0.4), ("signatures", 0.3)):
        _fake_run(sweep, tmp_path / "prepared", dataset, "meta_full_ft", 0, v, 0.1, name="rf100vl")
    t = build(sweep)
    assert t.groups == {"Flora/Fauna": ["aquarium-combined", "bees"], "Document": ["signatures"]}
    assert t.over_datasets("bbox/AP", "recipe=meta_full_ft", t.groups["Flora/Fauna"]).mean == pytest.approx(0.5)
    assert "| Flora/Fauna | 2 | 10.0 [10.0, 10.0] | 50.0 [" in markdown(t)


# ------------------------------------------------------------------------------- the chain
def test_the_stand_in_chain_end_to_end(tmp_path):
    """stand-in release -> prepare (one dataset malformed) -> 2 datasets x 2 seeds x 2 setups as one
    multirun, with a third dataset asked for whose runs are refused -> the table."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}

    def command(*args, module="sam3_lora.benchmark"):
        res = subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        return res.stdout

    command("stand_in", "name=odinw13", "root=release")
    bad = tmp_path / "release/Raccoon/Raccoon.v2-raw.coco/valid/annotations_without_background.json"
    bad.write_text("{not json")
    printed = command("prepare", "name=odinw13", "root=release", "out=prepared", "seeds=[3,30]")
    assert "2 of 13 datasets ready" in printed and "malformed  Raccoon" in printed
    command(
        "-m", "experiment=odinw13_10shot", "debug=benchmark_stand_in", "benchmark.prepared=prepared",
        "benchmark.dataset=Aquarium,pistols,Raccoon", "seed=3,30", "hydra.sweep.dir=multirun", module="sam3_lora.train",
    )
    finished = sorted(p.parent.name for p in (tmp_path / "multirun").glob("*/results.json"))
    assert len(finished) == 8 and not any("Raccoon" in name for name in finished)
    md = (tmp_path / "multirun/benchmark_table.md").read_text()
    assert md == write_table(tmp_path / "multirun").read_text()  # the callback's table is the command's
    assert "| Aquarium | " in md and "| pistols | " in md and "**mean over 2 of 13 datasets**" in md
    assert "Raccoon: malformed" in md and "recipe=meta_full_ft (last)" in md and "recipe=benchmark_lora (last)" in md
    assert "## Paired against recipe=meta_full_ft" in md and "## Masks" in md
    results = json.loads((tmp_path / "multirun" / finished[0] / "results.json").read_text())
    manifest = json.loads((tmp_path / "prepared/manifest.json").read_text())
    shots = {f["sha256"] for d in manifest["datasets"] if d["status"] == "ok" for f in d["few_shot"]}
    assert results["dataset"]["splits"]["train"]["sha256"] in shots  # trained on the manifest's few-shot file
    assert results["device"] == "cpu" and "CPU-h" in md and "Note:" not in md
