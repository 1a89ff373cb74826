"""tools/bench.py runs end to end (a smoke test: no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_runs_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "bench.py"),
            "--model",
            "sam3_tiny",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--rounds",
            "1",
            "--data",
            str(tmp_path / "toy"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads(out.read_text())
    assert {"full fine-tuning", "LoRA balanced", "LoRA balanced + ViT act. ckpt"} <= set(results["train"])
    assert results["train"]["LoRA balanced"]["trainable"] < results["train"]["full fine-tuning"]["trainable"]
    assert set(results["inference"]) == {"base_s", "unmerged_s", "merged_s"}
    assert "| training setup |" in res.stdout and "ours / PEFT" in res.stdout
    assert results["train"]["LoRA balanced + text cache"]["trainable"] == results["train"]["LoRA balanced"]["trainable"]
    assert "best LoRA balanced throughput" in res.stdout and "unmerged / merged" in res.stdout
