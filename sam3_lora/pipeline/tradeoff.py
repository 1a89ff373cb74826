"""What a tuned model gains on its target against what it keeps of its source, as the adapter is scaled
from 0 (the base inside it) to 1 (as trained): WiSE-FT's weight interpolation, which for LoRA is the
adapter's scale.

At each scale both datasets are scored on their held-out splits (the SA-Co threshold chosen on each
dataset's valid split for that scaled model). The scale to ship is chosen on the valid splits only:
the largest one whose retention drop (segm AP on the retention dataset's valid split, against scale 0)
stays within the budget; the held-out figures are reported, never used to choose.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from sam3_lora.core.atomic_files import (
    atomic_write,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    written_together,
)
from sam3_lora.data.prepare import PreparedDataset
from sam3_lora.evaluation.heldout import HeldoutScorer, score_split
from sam3_lora.lora import set_adapter_scale

SELECTION_KEY = "segm/AP"  # the retention figure the budget is on
COLUMNS = ("bbox/AP", "segm/AP", "segm/cgF1", "saco/IL_MCC", "saco/IL_FPR")


@dataclass
class ScalePoint:
    scale: float
    target: Dict[str, float]  # held-out
    retention: Dict[str, float]  # held-out
    retention_valid: float  # SELECTION_KEY on the retention dataset's valid split


@dataclass
class TradeOff:
    points: List[ScalePoint]
    budget: float
    chosen: float  # the largest scale whose retention valid drop is within the budget
    target_split: str
    retention_split: str
    target_name: str
    retention_name: str

    def drop(self, point: ScalePoint) -> float:
        """The retention valid figure lost against the base (scale 0)."""
        return self.base.retention_valid - point.retention_valid

    @property
    def base(self) -> ScalePoint:
        return min(self.points, key=lambda p: p.scale)


def scan(
    model: nn.Module,
    target: PreparedDataset,
    retention: PreparedDataset,
    scales: Sequence[float],
    budget: float,
    device: torch.device,
    loader_settings: Dict,
) -> TradeOff:
    """Score ``model`` at each adapter scale (0 is always scanned: the base); choose on valid."""
    scales = sorted({0.0, *map(float, scales)})
    target_scorer = HeldoutScorer(target, target.heldout(), **loader_settings)
    retention_scorer = HeldoutScorer(retention, retention.heldout(), **loader_settings)
    valid = retention.require("valid")
    valid_loader = retention.eval_loader("valid", loader_settings["image_size"], 1, loader_settings["num_workers"])
    points = []
    for scale in scales:
        set_adapter_scale(model, scale)
        on_valid = score_split(model, valid_loader, valid.ann_file, device, loader_settings["max_dets"])
        kept = retention_scorer.score(
            model, device, given=on_valid.metrics["saco/threshold"], given_as="chosen on 'valid' for this scale"
        )
        gained = target_scorer.score(model, device)
        points.append(ScalePoint(scale, gained.metrics, kept.metrics, on_valid.metrics[SELECTION_KEY]))
    set_adapter_scale(model, 1.0)
    result = TradeOff(points, budget, 0.0, target_scorer.split, retention_scorer.split, target.name, retention.name)
    result.chosen = max(p.scale for p in points if result.drop(p) <= budget + 1e-12)
    return result


def write(result: TradeOff, out_dir: Path) -> Dict[str, Path]:
    """``tradeoff.json`` / ``.csv`` / ``.md`` / ``.png`` in ``out_dir``."""
    files = {kind: out_dir / f"tradeoff.{kind}" for kind in ("json", "csv", "md", "png")}
    header = ["scale", *(f"target_{k}" for k in COLUMNS), *(f"retention_{k}" for k in COLUMNS), "retention_valid_drop"]
    rows = [
        [p.scale, *(p.target.get(k) for k in COLUMNS), *(p.retention.get(k) for k in COLUMNS), result.drop(p)]
        for p in result.points
    ]
    with written_together():
        atomic_write_json(files["json"], {**asdict(result), "base": asdict(result.base)})
        atomic_write_csv(files["csv"], [header, *rows])
        atomic_write_text(files["md"], markdown(result))
    plot([result], files["png"])
    return files


def markdown(result: TradeOff) -> str:
    head = "| adapter scale | " + " | ".join(f"target {k}" for k in ("bbox AP", "segm AP", "segm cgF1")) + " | "
    head += (
        " | ".join(f"retention {k}" for k in ("bbox AP", "segm AP", "segm cgF1", "IL_FPR"))
        + " | retention valid drop |"
    )
    lines = [head, "|" + "---|" * 9]
    for p in result.points:
        cells = [f"{p.scale:g}" + (" (chosen)" if p.scale == result.chosen else "")]
        cells += [f"{p.target[k]:.3f}" for k in ("bbox/AP", "segm/AP", "segm/cgF1")]
        cells += [f"{p.retention[k]:.3f}" for k in ("bbox/AP", "segm/AP", "segm/cgF1", "saco/IL_FPR")]
        cells.append(f"{result.drop(p):+.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Target: `{result.target_name}` {result.target_split} split; retention: `{result.retention_name}` "
        f"{result.retention_split} split (held-out figures). The scale is chosen on the retention dataset's valid "
        f"split: the largest whose segm AP drop against scale 0 (the base) is <= {result.budget:g}: "
        f"**{result.chosen:g}**.",
    ]
    return "\n".join(lines) + "\n"


def plot(curves: Sequence[TradeOff], path: Path, labels: Optional[Sequence[str]] = None, points=None) -> None:
    """Target segm AP against retention segm AP (held-out), one curve per result, scales annotated;
    ``points``: other setups as ``(label, retention AP, target AP)`` markers on the same axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5))
    for i, result in enumerate(curves):
        xs = [p.retention[SELECTION_KEY] for p in result.points]
        ys = [p.target[SELECTION_KEY] for p in result.points]
        label = labels[i] if labels else "adapter scale 0 → 1"
        ax.plot(xs, ys, marker="o", label=label)
        for p, x, y in zip(result.points, xs, ys):
            ax.annotate(f"{p.scale:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for label, x, y in points or []:
        ax.scatter([x], [y], marker="s", label=label)
    ax.set_xlabel("retention (source) segm AP, held-out")
    ax.set_ylabel("target segm AP, held-out")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), 1 << 20)
    plt.close(fig)
