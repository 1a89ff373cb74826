"""What a GPU machine must show, in one command with a time budget (``make gpu-check``).

    python tools/gpu_check.py --out gpu-check [--budget-s 300]     # on a CUDA machine
    python tools/gpu_check.py --out /tmp/dry --dry-run             # the same sections on a CPU, tiny model

Sections in priority order, each given what is left of the budget (a section not reached, or cut by
the budget, is reported as such):

1. ``cuda tests``: ``pytest -m cuda`` (the CUDA fixes, each speed lever, the full 1008 px model with
   lora=balanced, full and none, its peak memory);
2. ``benchmark``: ``tools/bench.py --model sam3 --suite levers``: full fine-tuning against LoRA
   balanced at batch 4 with each lever added in turn, batch 1 with ViT activation checkpointing,
   merged and unmerged inference at batch 1, the text cache and the cached trunk interleaved;
3. ``quick start``: ``python -m sam3_lora.train experiment=quickstart``, its wall time and figures;
4. ``benchmark run``: 50 steps of Meta's recipe (``experiment=odinw13_10shot recipe=meta_full_ft``) on
   a 10-shot stand-in dataset at full size (random weights) and its evaluations: seconds per step and
   per evaluated image, and each benchmark table's GPU-hours projected from them (``TABLES``' sizes
   are assumptions, said as such).

Writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out``: the device, the versions, each section's
numbers and each GPU target marked met or missed. ``--dry-run`` runs every section small on the
machine at hand (the cuda tests are collected and skip without a GPU), so the command is tested
where no GPU is.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

ROOT = Path(__file__).resolve().parent.parent
# GPU targets: (what, the bench figure's key, comparison, bound).
TARGETS = (
    ("LoRA balanced step / full fine-tuning step at batch 4, every lever", "levers_vs_full", "<=", 0.70),
    ("LoRA balanced images/s at the best batch", "best_images_per_s", ">=", 15.0),
    ("merged inference, ms per image at batch 1", "merged_ms_per_image", "<=", 40.0),
    ("unmerged / merged inference", "unmerged_vs_merged", "<=", 1.05),
    ("peak memory at batch 1 with ViT act. ckpt, GB", "batch1_ckpt_gb", "<=", 6.0),
    ("text cache step / stock step (interleaved)", "text_cache_ratio", "<=", 1.00),
    ("LoRA heads cached step / LoRA balanced step, epochs after the first", "trunk_heads_vs_balanced", "<=", 0.30),
    ("validation forward, cached trunk / uncached", "trunk_forward_ratio", "<=", 0.30),
)


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.time() + seconds

    def left(self) -> float:
        return self.deadline - time.time()


def _run(cmd: List[str], budget: Budget, log: Path, cwd: Path = ROOT) -> Dict:
    """Run ``cmd`` within what is left of the budget; its output to ``log``."""
    left = budget.left()
    if left < 5:
        return {"status": "not run (budget spent)"}
    started = time.time()
    with open(log, "w") as out:
        try:
            proc = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, timeout=left, text=True)
            status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            status = "cut by the budget"
    return {"status": status, "seconds": round(time.time() - started, 1), "log": log.name}


def cuda_tests(out: Path, work: Path, budget: Budget, dry_run: bool) -> Dict:
    xml = out / "cuda_tests.xml"
    result = _run(
        [sys.executable, "-m", "pytest", "-m", "cuda", "-v", "-p", "no:cacheprovider", f"--junitxml={xml}"],
        budget,
        out / "cuda_tests.log",
    )
    if xml.is_file():
        root = ET.parse(xml).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        result.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
        result["passed"] = result["tests"] - result["failures"] - result["errors"] - result["skipped"]
    log = out / "cuda_tests.log"
    peaks = re.findall(r"\[(full-size[^\]]*)\] (.*?) peak ([\d.]+) GB", log.read_text() if log.is_file() else "")
    result["full_size_peaks_gb"] = {f"{where} {what}".strip(" :"): float(gb) for where, what, gb in peaks}
    return result


def benchmark(out: Path, work: Path, budget: Budget, dry_run: bool) -> Dict:
    bench_json = out / "bench.json"
    model, extra = (
        ("sam3_tiny", ["--steps", "1", "--warmup", "1"]) if dry_run else ("sam3", ["--steps", "5", "--warmup", "2"])
    )
    cmd = [sys.executable, str(ROOT / "tools" / "bench.py"), "--model", model, "--suite", "levers", "--batch", "4"]
    cmd += [
        "--inference-batch",
        "1",
        "--rounds",
        "1",
        "--json",
        str(bench_json),
        "--data",
        str(work / "bench_toy"),
        *extra,
    ]
    if not dry_run:
        cmd += ["--best-batch", "8"]
    result = _run(cmd, budget, out / "bench.log")
    if bench_json.is_file():
        result["figures"] = bench_figures(json.loads(bench_json.read_text()))
        result["machine"] = json.loads(bench_json.read_text())["machine"]
    return result


def bench_figures(b: Dict) -> Dict[str, Optional[float]]:
    """The targets' figures from tools/bench.py's JSON (None where a setup did not run)."""
    t, i = b["train"], b["inference"]
    ok = {n: x for n, x in t.items() if "failed" not in x}
    full = ok.get("full fine-tuning")
    levers = ok.get("LoRA balanced + text cache + bf16 base + compiled ViT") or ok.get("LoRA balanced + text cache")
    lora = {n: x for n, x in ok.items() if n.startswith("LoRA balanced")}
    small = next((x for n, x in ok.items() if n.endswith("act. ckpt, batch 1")), None)
    per_image = i["merged_s"] / b.get("inference_batch", b["batch"]) * 1000
    return {
        "full_step_ms": full and full["step_s"] * 1000,
        "lora_step_ms": ok.get("LoRA balanced") and ok["LoRA balanced"]["step_s"] * 1000,
        "levers_vs_full": levers and full and levers["step_s"] / full["step_s"],
        "best_images_per_s": max((x["images_per_s"] for x in lora.values()), default=None),
        "merged_ms_per_image": per_image,
        "unmerged_vs_merged": i["unmerged_s"] / i["merged_s"],
        "batch1_ckpt_gb": small and small["peak_total_mb"] / 1024,
        "text_cache_ratio": b.get("text_cache", {}).get("ratio"),
        "trunk_heads_vs_balanced": b.get("trunk_cache", {}).get("heads_cached_vs_balanced"),
        "trunk_heads_vs_heads": b.get("trunk_cache", {}).get("heads_cached_vs_heads"),
        "trunk_forward_ratio": b.get("trunk_cache", {}).get("forward_cached_vs_forward"),
        "trunk_mb_per_image": b.get("trunk_cache") and b["trunk_cache"]["bytes_per_image"] / 2**20,
    }


def quick_start(out: Path, work: Path, budget: Budget, dry_run: bool) -> Dict:
    run_dir = work / "quickstart"
    cmd = [sys.executable, "-m", "sam3_lora.train", "experiment=quickstart", f"hydra.run.dir={run_dir}"]
    cmd += [f"dataset.root={work / 'toy_shifted'}", f"retention.root={work / 'toy_base'}"]
    if dry_run:  # the same job, scaled down
        cmd += [
            "dataset.generate.splits={train: 8, valid: 4, test: 4}",
            "retention.generate.splits={train: 0, valid: 3, test: 4}",
            "trainer.max_epochs=1",
            "trainer.num_workers=0",
        ]
    result = _run(cmd, budget, out / "quickstart.log")
    results = run_dir / "results.json"
    if results.is_file():
        r = json.loads(results.read_text())
        tuned = r["results"].get("lora", {})
        result["figures"] = {k: tuned.get(k) for k in ("bbox/AP", "segm/AP", "segm/cgF1")}
        result["step_time_s"] = r.get("step_time_s")
    return result


# The benchmark tables' runs (datasets x seeds x setups) and an assumed size per run, to project GPU-hours
# from one measured 10-shot run: steps = max_epochs x images / effective batch 2. The sizes are
# assumptions, said as such in the report, until a prepared manifest gives the real ones.
TABLES = {
    "odinw13_10shot": {"runs": 13 * 3 * 3, "max_epochs": 40, "train_images": 50, "test_images": 500},
    "odinw13_full": {"runs": 13 * 1 * 3, "max_epochs": 40, "train_images": 1000, "test_images": 500},
    "rf100vl_10shot": {"runs": 100 * 1 * 3, "max_epochs": 20, "train_images": 50, "test_images": 200},
    "rf100vl_full": {"runs": 100 * 1 * 3, "max_epochs": 20, "train_images": 1000, "test_images": 200},
}
BENCH_STEPS = 50


def benchmark_run(out: Path, work: Path, budget: Budget, dry_run: bool) -> Dict:
    """50 training steps of Meta's recipe and its evaluations on a 10-shot dataset (the ODinW stand-in
    at full size, random weights): seconds per step and per evaluated image, projected per table."""
    release, prepared, run_dir = work / "odinw_release", work / "odinw_prepared", work / "benchmark_run"
    setup = [
        [sys.executable, "-m", "sam3_lora.benchmark", "stand_in", "name=odinw13", f"root={release}"],
        [sys.executable, "-m", "sam3_lora.benchmark", "prepare", "name=odinw13", f"root={release}", f"out={prepared}", "seeds=[3]"],
    ]
    for cmd in setup:
        result = _run(cmd, budget, out / "benchmark_run.log")
        if result["status"] != "ok":
            return result
    steps = 2 if dry_run else BENCH_STEPS
    cmd = [sys.executable, "-m", "sam3_lora.train", "experiment=odinw13_10shot", "recipe=meta_full_ft"]
    cmd += [f"benchmark.prepared={prepared}", "benchmark.dataset=Aquarium", "seed=3", f"hydra.run.dir={run_dir}"]
    cmd += [f"trainer.max_steps={steps}", "trainer.max_epochs=10000", "trainer.eval_every=10000", "trainer.num_workers=0"]
    cmd += ["final_eval.compare_base=false", "logger=none"]
    cmd += ["model=sam3_tiny"] if dry_run else ["model.random_init=true"]
    started = time.time()
    result = _run(cmd, budget, out / "benchmark_run.log")
    results = run_dir / "results.json"
    if not results.is_file():
        return result
    r = json.loads(results.read_text())
    evaluated = sum(r["dataset"]["splits"][s]["images"] for s in ("valid", "test"))  # one validation, one scoring
    # everything but the steps (start-up, model, data, validation, scoring) charged to the evaluated
    # images: an upper bound on evaluation's cost per image
    beyond_steps_s = time.time() - started - steps * r["step_time_s"]
    figures = {"steps": steps, "step_s": r["step_time_s"], "eval_s_per_image": beyond_steps_s / evaluated}
    result["figures"] = figures
    result["projected_gpu_hours"] = {
        name: round(t["runs"] * (t["max_epochs"] * t["train_images"] / 2 * figures["step_s"]
                                 + 5 * t["test_images"] * figures["eval_s_per_image"]) / 3600, 1)
        for name, t in TABLES.items()
    }
    result["projection_assumes"] = (
        "runs and max_epochs as the experiments; train and test images per dataset as TABLES (assumed, not "
        "measured); 5 evaluations per run; evaluation at its upper bound per image"
    )
    return result


SECTIONS: Dict[str, Callable] = {
    "cuda tests": cuda_tests,
    "benchmark": benchmark,
    "quick start": quick_start,
    "benchmark run": benchmark_run,
}


def device_facts() -> Dict:
    facts = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        facts["device"] = torch.cuda.get_device_name()
        facts["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    else:
        facts["device"] = f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    return facts


def targets(sections: Dict, dry_run: bool) -> List[Dict]:
    """Each GPU target with the figure measured; met or missed on a GPU, not judged in a dry run."""
    figures = sections.get("benchmark", {}).get("figures", {})
    marked = []
    for what, key, op, bound in TARGETS:
        value = figures.get(key)
        met = None if value is None or dry_run else (value <= bound if op == "<=" else value >= bound)
        marked.append({"target": f"{what} {op} {bound:g}", "value": value, "met": met})
    return marked


def markdown(report: Dict) -> str:
    d = report["facts"]
    lines = [
        f"# GPU check: {d['device']}",
        "",
        f"torch {d['torch']}, CUDA {d['cuda']}, Python {d['python']}; budget {report['budget_s']:.0f} s, "
        f"used {report['used_s']:.0f} s{' (dry run: small settings, CPU figures)' if report['dry_run'] else ''}.",
        "",
        "| section | status | seconds | numbers |",
        "|---|---|---|---|",
    ]
    for name, s in report["sections"].items():
        numbers = {k: v for k, v in s.items() if k not in ("status", "seconds", "log", "machine")}
        lines.append(f"| {name} | {s['status']} | {s.get('seconds', '-')} | {json.dumps(numbers, default=str)} |")
    lines += ["", "| GPU target | measured | met |", "|---|---|---|"]
    for t in report["targets"]:
        value = "-" if t["value"] is None else f"{t['value']:.3g}"
        judged = "not judged (dry run)" if report["dry_run"] and t["value"] is not None else "not measured"
        met = judged if t["met"] is None else ("met" if t["met"] else "missed")
        lines.append(f"| {t['target']} | {value} | {met} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for gpu_check.json, gpu_check.md and the sections' logs")
    ap.add_argument("--budget-s", type=float, default=300.0, help="the whole check's time budget, in seconds")
    ap.add_argument("--dry-run", action="store_true", help="every section small, on whatever machine this is")
    args = ap.parse_args(argv)
    dry_run = args.dry_run or not torch.cuda.is_available()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget, started = Budget(args.budget_s), time.time()
    sections = {}
    with tempfile.TemporaryDirectory(prefix="sam3_lora_gpu_check_") as work:  # data and run directories
        for name, section in SECTIONS.items():
            sections[name] = section(out, Path(work), budget, dry_run)
            print(f"{name}: {sections[name]['status']} ({sections[name].get('seconds', 0)} s)", file=sys.stderr)
    report = {
        "facts": device_facts(),
        "dry_run": dry_run,
        "budget_s": args.budget_s,
        "used_s": round(time.time() - started, 1),
        "sections": sections,
        "targets": targets(sections, dry_run),
    }
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if all(s["status"] == "ok" for s in sections.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
