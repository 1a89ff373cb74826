"""``make gpu-check`` (tools/gpu_check.py): its dry run on this machine gives every section a number,
and a spent budget reports each section as not run."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _gpu_check(out, *args, timeout=600):
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_dry_run_gives_every_section_a_number(tmp_path):
    res = _gpu_check(tmp_path, "--dry-run", "--budget-s", "600")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = report["sections"]
    assert list(sections) == ["cuda tests", "benchmark", "quick start", "benchmark run"]
    assert all(s["status"] == "ok" and s["seconds"] > 0 for s in sections.values())
    tests = sections["cuda tests"]
    assert tests["tests"] >= 20 and tests["failures"] == tests["errors"] == 0  # collected; they skip on a CPU
    figures = sections["benchmark"]["figures"]
    for key in ("full_step_ms", "lora_step_ms", "merged_ms_per_image", "unmerged_vs_merged", "batch1_ckpt_gb") + (
        "trunk_heads_vs_balanced",
        "trunk_forward_ratio",
        "trunk_mb_per_image",
    ):
        assert figures[key] > 0, key
    assert 0.5 < figures["text_cache_ratio"] < 2
    assert sections["quick start"]["figures"]["segm/AP"] >= 0 and sections["quick start"]["step_time_s"] > 0
    run = sections["benchmark run"]
    assert run["figures"]["step_s"] > 0 and run["figures"]["eval_s_per_image"] > 0
    assert set(run["projected_gpu_hours"]) == {"odinw13_10shot", "odinw13_full", "rf100vl_10shot", "rf100vl_full"}
    assert "assumed" in run["projection_assumes"]
    assert report["dry_run"] and all(t["met"] is None for t in report["targets"])  # GPU targets not judged here
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| GPU target | measured | met |" in md and "not judged (dry run)" in md and "torch " in md


def test_sections_beyond_the_budget_are_reported_as_not_run(tmp_path):
    res = _gpu_check(tmp_path, "--dry-run", "--budget-s", "1", timeout=120)
    assert res.returncode == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {s["status"] for s in report["sections"].values()} == {"not run (budget spent)"}
    assert "not measured" in (tmp_path / "gpu_check.md").read_text()
