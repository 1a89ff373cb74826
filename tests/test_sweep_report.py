"""The sweep report: runs grouped by setup, seeds averaged, the base row, findings, files.

Inputs are results.json files laid out as a multirun leaves them; the expected figures are
worked out by hand in the comments.
"""

import csv
import json
import math
import subprocess
import sys

import pytest

from sam3_lora.runs.results import metric_change
from sam3_lora.runs.intervals import Summary, paired_difference, summarize
from sam3_lora.runs.sweep_report import BASE, SweepReportError, _setup_name, aggregate, collect, comparisons, write_report


def _metrics(bbox, segm, cgf1=None):
    m = {"bbox/AP": bbox, "segm/AP": segm, "bbox/AP50": bbox, "segm/AP50": segm}
    if cgf1 is not None:
        m["segm/cgF1"] = cgf1
    return m


def _write_run(sweep, name, overrides, seed, base, tuned, retention_base, retention_tuned, trainable, step, lora=True):
    run = sweep / name
    run.mkdir(parents=True)
    change = {k: retention_tuned[k] - retention_base[k] for k in retention_tuned}
    results = {
        "results": {"base": base, ("lora" if lora else "finetuned"): tuned},
        "retention": {
            "dataset": "src",
            "split": "test",
            "base": retention_base,
            "tuned": retention_tuned,
            "change": change,
        },
        "trainable_parameters": trainable,
        "step_time_s": step,
        "overrides": overrides,
        "seed": seed,
    }
    (run / "results.json").write_text(json.dumps(results))


@pytest.fixture
def sweep(tmp_path):
    base = _metrics(0.10, 0.20, 0.05)
    src = _metrics(0.60, 0.70, 0.50)
    # LoRA: target segm AP 0.50 / 0.60 (mean 0.55, std 0.05); source segm AP 0.68 / 0.66 (change -0.02 / -0.04).
    _write_run(
        tmp_path,
        "a",
        "seed=0,recipe=lora",
        0,
        base,
        _metrics(0.40, 0.50, 0.3),
        src,
        _metrics(0.58, 0.68, 0.45),
        1000,
        0.10,
    )
    _write_run(
        tmp_path,
        "b",
        "seed=1,recipe=lora",
        1,
        base,
        _metrics(0.50, 0.60, 0.4),
        src,
        _metrics(0.56, 0.66, 0.40),
        1000,
        0.12,
    )
    # Full fine-tuning: target segm AP 0.70 (gain 0.50 over the base's 0.20), source segm AP 0.50 (change -0.20).
    _write_run(
        tmp_path,
        "c",
        "seed=0,recipe=full_finetune",
        0,
        base,
        _metrics(0.60, 0.70, 0.5),
        src,
        _metrics(0.40, 0.50, 0.20),
        50000,
        0.30,
        lora=False,
    )
    return tmp_path


def test_setup_name_drops_the_seed_and_what_every_run_shares():
    assert _setup_name("seed=1,recipe=lora_balanced") == "recipe=lora_balanced"
    assert _setup_name("lora.alpha=4,lora.rank=2,seed=3") == "lora.alpha=4,lora.rank=2"
    assert _setup_name("lora.alpha=4,lora.rank=2,seed=3", shared=["lora.alpha=4"]) == "lora.rank=2"
    assert _setup_name("lora.targets=[q_proj,v_proj],seed=0") == "lora.targets=[q_proj,v_proj]"
    assert _setup_name("seed=0") == "(defaults)"


def test_sweep_directories_named_before_the_recipe_rename_join_todays_setups():
    # conf/tuning/ is conf/recipe/ now: a sweep run as tuning=X is the setup recipe=X.
    assert _setup_name("seed=2,tuning=lora_heads") == "recipe=lora_heads"
    assert _setup_name("lora.rank=4,seed=0,tuning=full_finetune", shared=["recipe=full_finetune"]) == "lora.rank=4"


def test_setups_of_equal_size_keep_their_numeric_order(tmp_path):
    base, src = _metrics(0.1, 0.2), _metrics(0.6, 0.7)
    for weight in ("30", "0.3", "3", "10"):
        _write_run(
            tmp_path,
            f"preserve.weight={weight},seed=0",
            f"preserve.weight={weight},seed=0",
            0,
            base,
            _metrics(0.4, 0.5),
            src,
            _metrics(0.5, 0.6),
            1000,
            0.1,
        )
    rows = aggregate(collect(tmp_path))
    assert [r.setup for r in rows[1:]] == [f"preserve.weight={w}" for w in ("0.3", "3", "10", "30")]


def test_seeds_are_averaged_per_setup_with_the_base_first(sweep):
    rows = aggregate(collect(sweep))
    assert [r.setup for r in rows] == [BASE, "recipe=lora", "recipe=full_finetune"]
    base, lora, full = rows
    assert base.mean["target_segm_AP"] == pytest.approx(0.20) and base.mean["source_change_segm_AP"] == 0.0
    assert lora.seeds == [0, 1]
    # Sample std (n - 1 below): sqrt((0.05² + 0.05²) / 1) = 0.0707; t(0.975, 1) = 12.706, so the 95% interval
    # is 0.55 ± 12.706 · 0.0707 / √2 = 0.55 ± 0.635.
    assert lora.mean["target_segm_AP"] == pytest.approx(0.55) and lora.std["target_segm_AP"] == pytest.approx(0.0707107, abs=1e-6)
    interval = lora.summary["target_segm_AP"]
    assert (interval.n, interval.low, interval.high) == (2, pytest.approx(-0.0853, abs=1e-4), pytest.approx(1.1853, abs=1e-4))
    assert lora.mean["source_change_segm_AP"] == pytest.approx(-0.03)
    assert lora.std["source_change_segm_AP"] == pytest.approx(0.0141421, abs=1e-6)
    assert lora.mean["step_time_s"] == pytest.approx(0.11)
    assert full.mean["trainable_parameters"] == 50000 and full.std["target_segm_AP"] is None  # one seed: no spread
    assert full.is_full_finetune and not lora.is_full_finetune


def test_report_files_and_findings(sweep):
    md = write_report(sweep).read_text()
    # LoRA's segm gain: (0.55 - 0.20) / (0.70 - 0.20) = 70%; bbox: (0.45 - 0.10) / (0.60 - 0.10) = 70%.
    assert "segm AP gain 70% of full fine-tuning's" in md and "bbox AP gain 70% of full fine-tuning's" in md
    # Source segm change -0.030 against full fine-tuning's -0.200, but full fine-tuning ran one seed: one pair,
    # no interval, so no verdict.
    assert "source segm AP change -0.030 vs full -0.200 (n=1: no interval)" in md
    assert "| recipe=lora | 2 | 0.450 ± 0.071 [-0.185, 1.085] | 0.550 ± 0.071 [-0.085, 1.185] | 0.350 ± 0.071 [-0.285, 0.985] |" in md
    assert "| recipe=full_finetune | 1 | 0.600 | 0.700 |" in md  # one seed: the mean alone
    rows = list(csv.DictReader(open(sweep / "sweep_report.csv")))
    assert [r["setup"] for r in rows] == [BASE, "recipe=lora", "recipe=full_finetune"]
    assert math.isclose(float(rows[1]["target_segm_AP_mean"]), 0.55)
    per_run = list(csv.DictReader(open(sweep / "sweep_report_runs.csv")))
    assert sorted((r["run"], r["seed"]) for r in per_run) == [("a", "0"), ("b", "1"), ("c", "0")]
    assert (sweep / "sweep_report.png").stat().st_size > 5000


def test_report_command_names_an_empty_sweep(tmp_path):
    with pytest.raises(SweepReportError, match="no finished run"):
        collect(tmp_path)
    res = subprocess.run([sys.executable, "-m", "sam3_lora.report", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode != 0 and "no finished run" in res.stderr


def test_a_distilled_setup_is_compared_with_its_plain_one_and_its_scale_curve_drawn(sweep):
    base, src = _metrics(0.10, 0.20, 0.05), _metrics(0.60, 0.70, 0.50)
    # Distilled LoRA: target segm AP 0.44 = 0.80x plain's 0.55; source segm AP 0.69 (change -0.01 vs -0.03).
    _write_run(
        sweep, "d", "seed=0,recipe=lora_distill", 0, base, _metrics(0.3, 0.44), src, _metrics(0.6, 0.69), 1000, 0.2
    )
    results = json.loads((sweep / "a" / "results.json").read_text())
    results["adapter_scales"] = [
        {
            "scale": s,
            "target": _metrics(0.1 + 0.3 * s, 0.2 + 0.3 * s),
            "retention": _metrics(0.6 - 0.02 * s, 0.7 - 0.02 * s),
        }
        for s in (0.0, 0.5, 1.0)
    ]
    (sweep / "a" / "results.json").write_text(json.dumps(results))
    rows = {r.setup: r for r in aggregate(collect(sweep))}
    assert rows["recipe=lora"].curve == {}  # seed 1 has no curve: only scales every seed has are drawn
    md = write_report(sweep).read_text()
    assert (
        "- recipe=lora_distill against recipe=lora: target segm AP 0.440 = 0.80x plain's; source segm AP change -0.010 vs -0.030"
        in md
    )
    (sweep / "b" / "results.json").unlink()
    rows = {r.setup: r for r in aggregate(collect(sweep))}
    assert rows["recipe=lora"].curve[0.5] == pytest.approx(
        {"target_bbox_AP": 0.25, "target_segm_AP": 0.35, "source_change_bbox_AP": -0.01, "source_change_segm_AP": -0.01}
    )
    write_report(sweep)
    assert (sweep / "sweep_report.png").stat().st_size > 0


def test_metric_change_keeps_negative_sa_co_scores_and_drops_coco_sentinels():
    base = {"segm/AP": 0.70, "segm/APl": -1.0, "segm/cgF1": 0.60, "saco/IL_MCC": 0.80}
    tuned = {"segm/AP": 0.10, "segm/APl": -1.0, "segm/cgF1": -0.01, "saco/IL_MCC": -0.25, "segm/AR1": 0.2}
    # cgF1 and IL_MCC may be negative (an MCC below 0); COCO's -1 means "no object of that size"; AR1 has no base.
    assert metric_change(base, tuned) == pytest.approx({"segm/AP": -0.60, "segm/cgF1": -0.61, "saco/IL_MCC": -1.05})


def test_a_figure_fewer_seeds_recorded_says_its_n(sweep):
    # Seed 1's tuned source cgF1 is missing (an old results.json, say): the mean is seed 0's alone, and says so.
    results = json.loads((sweep / "b" / "results.json").read_text())
    del results["retention"]["tuned"]["segm/cgF1"]
    (sweep / "b" / "results.json").write_text(json.dumps(results))
    # Seed 0's tuned source cgF1 is negative (fires on absent concepts): a score, so it is averaged.
    results = json.loads((sweep / "a" / "results.json").read_text())
    results["retention"]["tuned"]["segm/cgF1"] = -0.05
    (sweep / "a" / "results.json").write_text(json.dumps(results))
    lora = {r.setup: r for r in aggregate(collect(sweep))}["recipe=lora"]
    assert lora.mean["source_change_segm_cgF1"] == pytest.approx(-0.55) and lora.fewer == {"source_change_segm_cgF1": 1}
    assert "| -0.550 (n=1) |" in write_report(sweep).read_text()


def test_paired_differences_over_matched_seeds_against_a_hand_computation(sweep):
    base, src = _metrics(0.10, 0.20), _metrics(0.60, 0.70)
    # Full fine-tuning gets seeds 1 and 2; LoRA has 0 and 1: matched on seed 1 alone.
    _write_run(sweep, "e", "seed=1,recipe=full_finetune", 1, base, _metrics(0.6, 0.80), src, _metrics(0.4, 0.5), 50000, 0.3, lora=False)
    _write_run(sweep, "f", "seed=2,recipe=full_finetune", 2, base, _metrics(0.6, 0.75), src, _metrics(0.4, 0.5), 50000, 0.3, lora=False)
    rows = aggregate(collect(sweep))
    found = {(setup, ref): d for setup, ref, d in comparisons(rows)}
    lora_vs_full = found[("recipe=lora", "recipe=full_finetune")]["target_segm_AP"]
    # Seed 0: LoRA 0.50 - full 0.70 = -0.20; seed 1: 0.60 - 0.80 = -0.20; seed 2 only in full fine-tuning.
    assert lora_vs_full.seeds == [0, 1] and lora_vs_full.summary.mean == pytest.approx(-0.20)
    assert lora_vs_full.summary.std == pytest.approx(0.0) and lora_vs_full.unmatched == ["seed 2 only in the reference"]
    md = write_report(sweep).read_text()
    assert "| recipe=lora | recipe=full_finetune | 2 | " in md and "seed 2 only in the reference" in md
    # bbox AP: LoRA 0.40, 0.50 against full fine-tuning's 0.60, 0.60 on seeds 0, 1: -0.20, -0.10, mean -0.15, sample std 0.0707, half-width 0.635: [-0.785, +0.485] spans zero: within noise.
    assert "-0.150 [-0.785, +0.485] (within noise)" in md
    paired = list(csv.DictReader(open(sweep / "sweep_report_paired.csv")))
    row = next(r for r in paired if (r["setup"], r["reference"]) == ("recipe=lora", "recipe=full_finetune"))
    assert row["target_bbox_AP_n"] == "2" and math.isclose(float(row["target_bbox_AP_diff"]), -0.15)


def test_one_seed_has_no_interval_and_a_difference_of_one_pair_says_so():
    assert summarize([0.4]) == Summary(1, 0.4)
    assert summarize([None, float("nan")]) == Summary(0, None)
    one = paired_difference({0: 0.5, 1: None}, {0: 0.3, 1: 0.2})
    assert one.summary.n == 1 and one.summary.mean == pytest.approx(0.2) and one.summary.low is None
    assert one.unmatched == ["seed 1 only in the reference"]
    # Three seeds: 0.1, 0.2, 0.3: mean 0.2, s = 0.1, t(0.975, 2) = 4.303: 0.2 ± 0.2484 — spans zero.
    three = summarize([0.1, 0.2, 0.3])
    assert three.std == pytest.approx(0.1) and three.low == pytest.approx(0.2 - 0.24841, abs=1e-4)
    assert not three.excludes_zero and summarize([1.0, 1.1, 1.2]).excludes_zero


def _rule(**given):
    from sam3_lora.runs.selection import SelectionRule

    declared = dict(
        name="distillation weight",
        choose="preserve.weight",
        among=["recipe=lora_balanced_distill"],
        maximize="valid_source_change_segm_AP",
        require="valid_target_best",
        at_least=0.90,
        reference="recipe=lora_balanced",
    )
    return SelectionRule(**{**declared, **given})


def test_the_declared_rule_picks_from_the_committed_weight_sweeps_valid_table():
    """The distillation-weight sweep's valid figures as committed (docs/results/distill_weight_toy_runs.csv):
    every weight passes the floor 0.90 x 0.794; the most source kept on valid is 100's (-0.089 vs 30's -0.092)."""
    from pathlib import Path

    from sam3_lora.runs.selection import apply
    from sam3_lora.runs.sweep_report import VALID, SetupRow

    committed = Path(__file__).parents[1] / "docs" / "results" / "distill_weight_toy_runs.csv"
    rows = [
        SetupRow(_setup_name(r["run"]), [0], {c: float(r[c]) for c in VALID}, {})
        for r in csv.DictReader(open(committed))
    ]
    pick = apply(_rule(), rows, VALID)
    assert (pick.value, pick.setup) == ("100", "preserve.weight=100,recipe=lora_balanced_distill")
    assert pick.floor == pytest.approx(0.90 * 0.7943, abs=1e-3) and all(ok for *_, ok in pick.candidates)
    # A floor only 30 and 0.3 pass (0.826 x plain's target valid: 30's 0.829 and 0.3's 0.864; 100's is 0.814).
    assert apply(_rule(at_least=1.04), rows, VALID).value == "30"
    assert apply(_rule(at_least=2.0), rows, VALID).value is None  # no weight passes: nothing is chosen


def test_the_report_applies_the_rule_its_runs_were_launched_with(tmp_path):
    base, src = _metrics(0.1, 0.2), _metrics(0.6, 0.7)
    valid = {"plain": (0.80, -0.60), "1": (0.78, -0.30), "10": (0.70, -0.10)}  # target valid, source valid Δ
    for weight, (target_valid, source_valid) in valid.items():
        name = "recipe=lora_balanced" if weight == "plain" else f"preserve.weight={weight},recipe=lora_balanced_distill"
        _write_run(tmp_path, name, f"{name},seed=0", 0, base, _metrics(0.3, 0.5), src, _metrics(0.5, 0.6), 1000, 0.1)
        results = json.loads((tmp_path / name / "results.json").read_text())
        results["best_val"] = target_valid
        results["retention"]["valid"] = {"base": {"segm/AP": 0.7}, "tuned": {"segm/AP": 0.7 + source_valid}}
        (tmp_path / name / "results.json").write_text(json.dumps(results))
        hydra = tmp_path / name / ".hydra"
        hydra.mkdir()
        rule = "" if weight == "plain" else (
            "selection:\n  distillation weight:\n    choose: preserve.weight\n    among: [recipe=lora_balanced_distill]\n"
            "    maximize: valid_source_change_segm_AP\n    require: valid_target_best\n    at_least: 0.9\n"
            "    reference: recipe=lora_balanced\n"
        )
        (hydra / "config.yaml").write_text("seed: 0\n" + rule)
    md = write_report(tmp_path).read_text()
    # Floor 0.9 x 0.80 = 0.72: weight 10 (0.70) is below it, so 1 is picked though 10 keeps more.
    assert "→ **preserve.weight=1** (1: -0.300, 10: -0.100 (below the floor); floor 0.720)" in md
    assert "distillation weight: the preserve.weight among recipe=lora_balanced_distill with the largest" in md


def test_the_committed_results_table_is_what_the_report_command_makes_of_the_committed_runs(tmp_path):
    """docs/results/forgetting_toy/: each run's results.json and composed config as the sweep left them,
    beside the report made from them; a fresh clone re-makes the report and gets the same tables."""
    import shutil
    from pathlib import Path

    committed = Path(__file__).resolve().parents[1] / "docs" / "results" / "forgetting_toy"
    remade = tmp_path / "forgetting_toy"
    for results in committed.glob("*/results.json"):
        run = remade / results.parent.name
        shutil.copytree(results.parent, run)
    assert len(list(remade.iterdir())) == 30
    write_report(remade)
    for name in ("sweep_report.md", "sweep_report.csv", "sweep_report_paired.csv", "sweep_report_runs.csv"):
        assert (remade / name).read_text() == (committed / name).read_text(), name
    report = (committed / "sweep_report.md").read_text().splitlines()
    readme = (committed.parents[2] / "README.md").read_text().splitlines()
    rows = [line for line in readme if line.startswith(("| recipe=", "| frozen base"))]
    assert len(rows) == 10 + 1 + 18  # the held-out table and the paired one, as the report prints them
    assert [row for row in rows if row not in report] == []
