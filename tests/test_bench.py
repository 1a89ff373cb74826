"""tools/bench.py runs end to end (a smoke test: no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bench(tmp_path, *extra):
    out = tmp_path / "bench.json"
    args = ["--model", "sam3_tiny", "--steps", "1", "--warmup", "1", "--rounds", "1", "--data", str(tmp_path / "toy")]
    res = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "bench.py"), *args, "--json", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res, json.loads(out.read_text())


def test_bench_runs_and_writes_json(tmp_path):
    res, results = _bench(tmp_path)
    assert {"full fine-tuning", "LoRA balanced", "LoRA balanced + ViT act. ckpt"} <= set(results["train"])
    assert results["train"]["LoRA balanced"]["trainable"] < results["train"]["full fine-tuning"]["trainable"]
    assert set(results["inference"]) == {"base_s", "unmerged_s", "merged_s"}
    assert "| training setup |" in res.stdout and "ours / PEFT" in res.stdout
    assert results["train"]["LoRA balanced + text cache"]["trainable"] == results["train"]["LoRA balanced"]["trainable"]
    assert "best LoRA balanced throughput" in res.stdout and "unmerged / merged" in res.stdout


def test_one_comparison_alone(tmp_path):
    res, results = _bench(tmp_path, "--suite", "distill")
    assert results["train"] == {} and "trunk_cache" not in results and "text_cache" not in results
    assert results["distill"]["distill_step_s"] > 0 and results["distill"]["plain_step_s"] > 0
    assert "LoRA balanced + distillation (half labelled, half anchors)" in res.stdout
