"""Tabulate and plot a sweep: one row per run of a multirun directory.

    python tools/sweep_report.py multirun/2026-11-21/18-00-00

Reads each run's results.json (written by sam3_lora.train) and .hydra/config.yaml, and
writes sweep_report.md, sweep_report.csv and sweep_report.png (best validation AP against
LoRA rank and against trainable parameters) into the multirun directory.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Dict, List

from omegaconf import OmegaConf

from sam3_lora.runs import layout

COLUMNS = (
    "overrides",
    "rank",
    "alpha",
    "trainable",
    "best_val",
    "heldout_AP",
    "wall_time_s",
    "peak_memory_gb",
    "images_per_s",
)


def collect(sweep_dir: Path) -> List[Dict]:
    rows = []
    for results in sorted(sweep_dir.glob(f"*/{layout.RESULTS}")):
        run = results.parent
        r = json.loads(results.read_text())
        cfg = OmegaConf.load(layout.hydra_config(run)) if layout.hydra_config(run).is_file() else None
        lora = cfg.lora if cfg is not None and cfg.get("lora") else {}
        final = r["results"].get("lora") or r["results"].get("finetuned") or {}
        rows.append(
            {
                "overrides": r.get("overrides") or run.name,
                "rank": lora.get("rank"),
                "alpha": lora.get("alpha"),
                "trainable": r["trainable_parameters"],
                "best_val": r["best_val"],
                "heldout_AP": final.get("bbox/AP"),
                "wall_time_s": r["wall_time_s"],
                "peak_memory_gb": r.get("peak_memory_gb"),
                "images_per_s": r.get("images_per_s"),
            }
        )
    if not rows:
        raise SystemExit(f"no finished runs (results.json) under {sweep_dir}")
    return rows


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def markdown(rows: List[Dict]) -> str:
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS)
    return head + "\n" + "\n".join("| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |" for r in rows) + "\n"


def plot(rows: List[Dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "rank", "LoRA rank"), (axes[1], "trainable", "trainable parameters")):
        pts = [(r[key], r["best_val"]) for r in rows if r[key] is not None and r["best_val"] is not None]
        for alpha in sorted({r["alpha"] for r in rows}, key=lambda a: (a is None, a)):
            sel = sorted(
                (r[key], r["best_val"])
                for r in rows
                if r["alpha"] == alpha and r[key] is not None and r["best_val"] is not None
            )
            if sel:
                ax.plot(*zip(*sel), marker="o", label=f"alpha {alpha}")
        ax.set_xlabel(label)
        ax.set_ylabel("best validation AP")
        if key == "trainable" and pts:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("sweep: best validation AP")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir")
    args = ap.parse_args()
    sweep = Path(args.sweep_dir)
    rows = collect(sweep)
    (sweep / "sweep_report.md").write_text(markdown(rows))
    with open(sweep / "sweep_report.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, sweep / "sweep_report.png")
    print(markdown(rows))
    print(f"written: {sweep / 'sweep_report.md'}, .csv, .png")


if __name__ == "__main__":
    main()
