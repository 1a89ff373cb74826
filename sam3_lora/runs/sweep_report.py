"""A sweep's runs as one results table: grouped by setup, mean ± std over seeds.

Written at the end of every multirun by :class:`WriteSweepReport` (the Hydra callback
``conf/train.yaml`` names), or by hand with ``python -m sam3_lora.report multirun/<date>/<time>``.

A run's setup is its overrides without ``seed`` and without those every run of the sweep
shares: the seeds of one setup are averaged, with their sample std and a 95% t interval over the
seeds (``runs/intervals.py``; one seed has neither, and the table says n=1). Each setup is also
compared with the references (plain LoRA balanced, full fine-tuning, and a keeping method's own plain
setup) seed by seed: the mean paired difference and its 95% interval, marked where it excludes zero.
Per setup: the tuned model's held-out (target-domain) COCO AP and cgF1, the change on the
retention dataset against the frozen base (negative = forgotten), trainable parameters and
seconds per optimizer step. The frozen base is one more row, from the base scores every run
records before it trains (identical across runs when the base and data are).

Files, beside the runs: ``sweep_report.md`` (the table and what it shows), ``sweep_report.csv``
(one row per setup, mean and std columns), ``sweep_report_runs.csv`` (one row per run) and
``sweep_report.png`` (target gain against source change, per setup).
"""

from __future__ import annotations

import logging
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sam3_lora.core.atomic_files import atomic_write, atomic_write_csv, atomic_write_text, written_together
from sam3_lora.core.errors import UserError
from sam3_lora.runs import layout
from sam3_lora.runs.intervals import PairedDifference, Summary, paired_difference, recorded, seed_values, summarize
from sam3_lora.runs.renames import current_override
from sam3_lora.runs.selection import Pick, apply, pick_lines, read_rules
from sam3_lora.runs.results import RESULTS_FIX, ResultsFileError, RunResults, metric_change

log = logging.getLogger("sam3_lora.report")

BASE = "frozen base"
# (column, results key): figures averaged per setup.
TARGET = (
    ("target_bbox_AP", "bbox/AP"),
    ("target_segm_AP", "segm/AP"),
    ("target_segm_cgF1", "segm/cgF1"),
    ("target_IL_FPR", "saco/IL_FPR"),
)
SOURCE = (
    ("source_change_bbox_AP", "bbox/AP"),
    ("source_change_segm_AP", "segm/AP"),
    ("source_change_segm_cgF1", "segm/cgF1"),
)
# Figures on valid splits, what a choice between setups (a weight, a learning rate) may look at: the
# target's best validation (trainer.best_metric) and the retention dataset's valid segm AP change.
VALID = ("valid_target_best", "valid_source_change_segm_AP")
FIGURES = tuple(c for c, _ in TARGET + SOURCE) + ("trainable_parameters", "step_time_s") + VALID
LABELS = {
    "target_bbox_AP": "target bbox AP",
    "target_segm_AP": "target segm AP",
    "target_segm_cgF1": "target segm cgF1",
    "target_IL_FPR": "target IL_FPR",
    "source_change_bbox_AP": "source Δ bbox AP",
    "source_change_segm_AP": "source Δ segm AP",
    "source_change_segm_cgF1": "source Δ segm cgF1",
    "valid_target_best": "target valid (best_metric)",
    "valid_source_change_segm_AP": "source valid Δ segm AP",
}


class SweepReportError(UserError, ValueError):
    """No finished run to report on."""


@dataclass
class Run:
    path: Path
    setup: str
    seed: Optional[int]
    base: Dict[str, float]
    full_finetune: bool  # lora=none (RunResults.full_fine_tuning)
    retention: Optional[dict]
    values: Dict[str, Optional[float]] = field(default_factory=dict)
    # final_eval.adapter_scales: scale -> {"target_segm_AP": ..., "source_change_segm_AP": ..., bbox alike}
    curve: Dict[float, Dict[str, float]] = field(default_factory=dict)


def override_parts(overrides: str) -> List[str]:
    """``a=1,b=[x,y],seed=0`` -> ``["a=1", "b=[x,y]", "seed=0"]`` (commas inside values kept), each
    under its group's current name (old sweep directories join today's setups)."""
    return [current_override(part) for part in re.split(r",(?=[\w.+~/]+=)", overrides or "") if part]


def _setup_name(overrides: str, shared: Sequence[str] = ()) -> str:
    """A run's setup: its overrides without ``seed`` (the seeds of a setup are averaged) and without
    those every run of the sweep shares (``shared``)."""
    kept = [p for p in override_parts(overrides) if not p.startswith("seed=") and p not in shared]
    return ",".join(kept) or "(defaults)"



def read_run(results_file: Path) -> Run:
    r = RunResults.read(results_file)
    run = Run(
        path=results_file.parent,
        setup=r.overrides or "",  # the overrides until collect() names the setup
        seed=r.seed,
        base=r.base,
        full_finetune=r.full_fine_tuning,
        retention=r.retention,
    )
    for column, key in TARGET:
        run.values[column] = r.tuned.get(key)
    # From the scores, not the stored "change": one rule for every results.json however old.
    retention = r.retention or {}
    source_change = metric_change(retention.get("base") or {}, retention.get("tuned") or {})
    for column, key in SOURCE:
        run.values[column] = source_change.get(key)
    run.values["trainable_parameters"] = r.trainable_parameters
    run.values["step_time_s"] = r.step_time_s
    run.values["valid_target_best"] = r.best_val
    valid = retention.get("valid") or {}
    valid_change = metric_change(valid.get("base") or {}, valid.get("tuned") or {})
    run.values["valid_source_change_segm_AP"] = valid_change.get("segm/AP")
    source_base = retention.get("base") or {}
    _require_curve_figures(r, source_base, results_file)
    for point in r.adapter_scales or []:
        run.curve[point["scale"]] = {
            **{f"target_{k}_AP": point["target"][f"{k}/AP"] for k in ("bbox", "segm")},
            **{
                f"source_change_{k}_AP": point["retention"][f"{k}/AP"] - source_base[f"{k}/AP"]
                for k in ("bbox", "segm")
            },
        }
    return run


def _require_curve_figures(r: RunResults, source_base: Dict[str, float], results_file: Path) -> None:
    """The figures each adapter-scale point is drawn from: there, or the run's file is named."""
    keys = ("bbox/AP", "segm/AP")
    lacking = [
        f"adapter_scales[{i}].{part} has no {key!r}"
        for i, point in enumerate(r.adapter_scales or [])
        for part in ("target", "retention")
        for key in keys
        if key not in point[part]
    ]
    if r.adapter_scales:
        lacking += [
            f"retention.base has no {key!r} (the adapter_scales curve is drawn against it)"
            for key in keys
            if key not in source_base
        ]
    if lacking:
        raise ResultsFileError(f"{results_file}: not a usable results.json: {'; '.join(lacking[:5])}. {RESULTS_FIX}")


def _numbers_as_numbers(path: Path) -> list:
    """Sort key: 'preserve.weight=3' before 'preserve.weight=10' (the digits in a run's name compared as numbers)."""
    parts = re.split(r"(\d+(?:\.\d+)?)", path.parent.name)
    return [float(part) if i % 2 else part for i, part in enumerate(parts)]


def collect(sweep_dir: Path, left_out: Optional[List[str]] = None) -> List[Run]:
    """Every finished run, its setup named by the overrides that vary across the sweep.

    A run whose results.json cannot be read (half-written by a crash, edited, another program's) is
    left out of the figures, never silently: it is logged and added to ``left_out``, which the report
    prints under its table. With none readable, the report is refused, naming them."""
    runs, unreadable = [], []
    for path in sorted(Path(sweep_dir).glob(f"*/{layout.RESULTS}"), key=_numbers_as_numbers):
        try:
            runs.append(read_run(path))
        except UserError as e:
            log.warning("sweep report: left out %s", e)
            unreadable.append(str(e))
    if left_out is not None:
        left_out.extend(unreadable)
    if not runs:
        found = f"; unreadable: {' | '.join(unreadable)}" if unreadable else ""
        raise SweepReportError(f"no finished run ({layout.RESULTS}) under {sweep_dir}{found}")
    parts = [set(override_parts(r.setup)) for r in runs]
    shared = set.intersection(*parts) if len(runs) > 1 else set()
    for run in runs:
        run.setup = _setup_name(run.setup, sorted(shared))
    return runs


def mean_std(values: Sequence[Optional[float]]):
    """Mean and sample std of the recorded values (std None below two); (None, None) if none."""
    summary = summarize(values)
    return summary.mean, summary.std


@dataclass
class SetupRow:
    setup: str
    seeds: List[Optional[int]]
    mean: Dict[str, Optional[float]]
    std: Dict[str, Optional[float]]
    is_full_finetune: bool = False
    curve: Dict[float, Dict[str, float]] = field(default_factory=dict)  # the seeds' mean per adapter scale
    # Seeds behind each figure, where fewer than the row's n recorded it (the table says so beside the figure).
    fewer: Dict[str, int] = field(default_factory=dict)
    summary: Dict[str, Summary] = field(default_factory=dict)  # n, mean, sample std, 95% interval per figure
    runs: List[Run] = field(default_factory=list)


def aggregate(runs: List[Run]) -> List[SetupRow]:
    """One row per setup (fewest trainable parameters first), after the frozen base (from the runs' base scores)."""
    rows = []
    bases = [r for r in runs if r.base]
    if bases:
        mean, std = {}, {}
        for column, key in TARGET:
            mean[column], std[column] = mean_std([r.base.get(key) for r in bases])
        for column, _ in SOURCE:
            has = any(r.retention for r in bases)
            mean[column], std[column] = (0.0, 0.0) if has else (None, None)
        mean["trainable_parameters"], std["trainable_parameters"] = 0, 0
        for column in ("step_time_s", *VALID):
            mean[column], std[column] = None, None
        rows.append(SetupRow(BASE, sorted({r.seed for r in bases}, key=str), mean, std))
    setups = []
    for setup in dict.fromkeys(r.setup for r in runs):
        group = [r for r in runs if r.setup == setup]
        mean, std, fewer = {}, {}, {}
        summary = {}
        for column in FIGURES:
            values = [r.values[column] for r in group]
            summary[column] = summarize(values)
            mean[column], std[column] = summary[column].mean, summary[column].std
            if 0 < len(recorded(values)) < len(group):
                fewer[column] = len(recorded(values))
        full = all(r.full_finetune for r in group)
        scales = sorted(set.intersection(*(set(r.curve) for r in group)))
        curve = {x: {k: statistics.fmean(r.curve[x][k] for r in group) for k in group[0].curve[x]} for x in scales}
        seeds = sorted((r.seed for r in group), key=str)
        setups.append(SetupRow(setup, seeds, mean, std, full, curve, fewer, summary, group))
    # Fewest trainable parameters first: LoRA minimal ... full fine-tuning.
    trainable = [r.mean["trainable_parameters"] for r in setups]
    order = sorted(range(len(setups)), key=lambda i: (trainable[i] is None, trainable[i] or 0, i))
    return rows + [setups[i] for i in order]


def _pm(m, s, n: Optional[int] = None, digits=3, summary: Optional[Summary] = None) -> str:
    """``mean ± sample std [95% interval]``; ``n`` when fewer seeds than the row's recorded this figure;
    one seed: the mean alone."""
    if m is None:
        return "-"
    spread = "" if s is None else f" ± {s:.{digits}f}"
    interval = "" if summary is None or summary.low is None else f" [{summary.low:.{digits}f}, {summary.high:.{digits}f}]"
    return f"{m:.{digits}f}{spread}{interval}" + (f" (n={n})" if n else "")


def _cell(row: "SetupRow", column: str) -> str:
    return _pm(row.mean[column], row.std[column], row.fewer.get(column), summary=row.summary.get(column))


# Each setup against these, seed by seed (those the sweep has), and a keeping method against its plain setup.
REFERENCES = ("recipe=lora_balanced", "recipe=full_finetune")
COMPARED = ("target_bbox_AP", "target_segm_AP", "source_change_segm_AP")


def plain_counterpart(setup: str) -> str:
    """``recipe=lora_balanced_distill_target`` -> ``recipe=lora_balanced``: a keeping method's plain setup."""
    return re.sub(r"_distill\w*", "", setup)


def comparisons(rows: List["SetupRow"]) -> List[tuple]:
    """(setup, reference, {figure: PairedDifference}) for each setup and each reference it has."""
    by_setup = {r.setup: r for r in rows if r.setup != BASE}
    found = []
    for row in by_setup.values():
        references = [ref for ref in REFERENCES if ref != row.setup]
        if "_distill" in row.setup:
            references.append(plain_counterpart(row.setup))
        for ref in dict.fromkeys(references):
            if ref not in by_setup:
                continue
            differences = {
                c: paired_difference(seed_values(row.runs, c), seed_values(by_setup[ref].runs, c)) for c in COMPARED
            }
            found.append((row.setup, ref, differences))
    return found


def _difference_cell(d: PairedDifference) -> str:
    s = d.summary
    if s.mean is None:
        return "-"
    if s.low is None:
        text = f"{s.mean:+.3f} (n=1, no interval)"
    else:
        text = f"{s.mean:+.3f} [{s.low:+.3f}, {s.high:+.3f}]" + (" *" if s.excludes_zero else " (within noise)")
    return text + (f" ({'; '.join(d.unmatched)})" if d.unmatched else "")


def paired_table(rows: List["SetupRow"]) -> List[str]:
    found = comparisons(rows)
    if not found:
        return []
    lines = [
        "",
        "Paired differences (setup − reference, seed by seed over the seeds both ran; mean and 95% t interval; "
        "* where the interval excludes zero):",
        "",
        "| setup | reference | n | " + " | ".join(LABELS[c] for c in COMPARED) + " |",
        "|" + "---|" * (3 + len(COMPARED)),
    ]
    for setup, ref, differences in found:
        n = max(d.summary.n for d in differences.values())
        lines.append(f"| {setup} | {ref} | {n} | " + " | ".join(_difference_cell(differences[c]) for c in COMPARED) + " |")
    return lines


def findings(rows: List[SetupRow]) -> List[str]:
    """What the table shows, computed: each LoRA setup against full fine-tuning."""
    fulls = [r for r in rows if r.is_full_finetune]
    full = next((r for r in fulls if r.setup == "recipe=full_finetune"), fulls[0] if fulls else None)
    base = next((r for r in rows if r.setup == BASE), None)
    if full is None or base is None:
        return []
    lines = []
    for row in rows:
        if row in (full, base) or row.is_full_finetune:
            continue
        parts = []
        for column, label in (("target_bbox_AP", "bbox"), ("target_segm_AP", "segm")):
            gain, full_gain = row.mean[column], full.mean[column]
            b = base.mean[column]
            if None in (gain, full_gain, b) or full_gain - b <= 0:
                continue
            parts.append(f"{label} AP gain {100 * (gain - b) / (full_gain - b):.0f}% of full fine-tuning's")
        for column, label in (("source_change_bbox_AP", "bbox"), ("source_change_segm_AP", "segm")):
            change, full_change = row.mean[column], full.mean[column]
            if change is None or full_change is None:
                continue
            verdict = _verdict(paired_difference(seed_values(row.runs, column), seed_values(full.runs, column)))
            parts.append(f"source {label} AP change {change:+.3f} vs full {full_change:+.3f} ({verdict})")
        if parts:
            lines.append(f"- {row.setup}: " + "; ".join(parts))
    return lines + distillation_findings(rows)


def _verdict(d: PairedDifference) -> str:
    """A source change against the reference's, in words its paired interval allows."""
    s = d.summary
    if s.low is None:
        return f"n={s.n}: no interval"
    if not s.excludes_zero:
        return "within noise"
    return "less forgetting" if s.mean > 0 else "more forgetting"


def distillation_findings(rows: List[SetupRow]) -> List[str]:
    """Each ``<setup>_distill...`` row against its plain ``<setup>`` row: the target kept, the source change."""
    by_setup = {r.setup: r for r in rows}
    lines = []
    for row in rows:
        plain = by_setup.get(plain_counterpart(row.setup))
        if "_distill" not in row.setup or plain is None:
            continue
        target, plain_target = row.mean["target_segm_AP"], plain.mean["target_segm_AP"]
        change, plain_change = row.mean["source_change_segm_AP"], plain.mean["source_change_segm_AP"]
        if None in (target, plain_target, change, plain_change) or plain_target <= 0:
            continue
        lines.append(
            f"- {row.setup} against {plain.setup}: target segm AP {target:.3f} = {target / plain_target:.2f}x "
            f"plain's; source segm AP change {change:+.3f} vs {plain_change:+.3f}"
        )
    return lines


def markdown(rows: List[SetupRow], left_out: Sequence[str] = (), picks: Sequence[Pick] = ()) -> str:
    """The report's table and notes; ``left_out``: the runs whose results.json could not be read;
    ``picks``: the choices the sweep's declared rules made."""
    figures = [LABELS[c] for c, _ in TARGET + SOURCE]
    head = "| " + " | ".join(["setup", "n", *figures, "trainable", "s / step"]) + " |"
    lines = [head, "|" + "---|" * (len(figures) + 4)]
    for r in rows:
        trainable = r.mean["trainable_parameters"]
        step = r.mean["step_time_s"]
        cells = [
            r.setup,
            str(len(r.seeds)),
            *(_cell(r, c) for c, _ in TARGET + SOURCE),
            "-" if trainable is None else f"{int(trainable):,}",
            "-" if step is None else f"{step:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if any(r.mean[c] is not None for r in rows for c in VALID):
        lines += [
            "",
            "On the valid splits (what a choice between setups may look at; the table above is held-out):",
            "",
        ]
        lines += ["| setup | " + " | ".join(LABELS[c] for c in VALID) + " |", "|---|---|---|"]
        lines += [
            f"| {r.setup} | " + " | ".join(_cell(r, c) for c in VALID) + " |"
            for r in rows[1:]
        ]
    found = findings(rows)
    notes = [
        "",
        "Target: the held-out split of the training dataset. Source Δ: the tuned model minus the frozen base on the "
        "retention dataset (negative = forgotten). cgF1 = pmF1 x IL_MCC at the score threshold chosen on valid "
        "(0..1; the SAM3 paper prints x100); IL_FPR: the share of prompts of absent concepts answered with a "
        "detection (lower is better). Mean ± sample std [95% t interval] over the seeds (n); one seed: the mean "
        "alone; a figure fewer seeds recorded says its own n.",
    ]
    skipped = [
        "",
        f"Left out: {len(left_out)} run(s) whose {layout.RESULTS} could not be read; every figure above is "
        "without them:",
        "",
        *(f"- {reason}" for reason in left_out),
    ]
    return (
        "\n".join(lines + pick_lines(picks, LABELS) + paired_table(rows) + notes + ([""] + found if found else []) + (skipped if left_out else []))
        + "\n"
    )


REPORT_FILES = (
    "sweep_report.md",
    "sweep_report.csv",
    "sweep_report_runs.csv",
    "sweep_report_paired.csv",
    "sweep_report.png",
)


def _summary_cells(row: SetupRow, column: str) -> list:
    s = row.summary.get(column)
    return [row.mean[column], row.std[column], s.low if s else None, s.high if s else None]


def _difference_cells(d: PairedDifference) -> list:
    return [d.summary.mean, d.summary.n, d.summary.low, d.summary.high]


def write_report(sweep_dir) -> Path:
    """Write the report files into ``sweep_dir``; returns the Markdown file."""
    sweep_dir = Path(sweep_dir)
    left_out: List[str] = []
    runs = collect(sweep_dir, left_out)
    rows = aggregate(runs)
    picks = [apply(rule, rows, VALID) for rule in read_rules([run.path for run in runs])]
    md, setups, per_run, paired, png = (sweep_dir / name for name in REPORT_FILES)
    with written_together():
        atomic_write_text(md, markdown(rows, left_out, picks))
        atomic_write_csv(
            setups,
            [["setup", "n", *(f"{c}_{s}" for c in FIGURES for s in ("mean", "std", "ci95_low", "ci95_high"))]]
            + [[r.setup, len(r.seeds), *(x for c in FIGURES for x in _summary_cells(r, c))] for r in rows],
        )
        atomic_write_csv(
            paired,
            [["setup", "reference", *(f"{c}_{s}" for c in COMPARED for s in ("diff", "n", "ci95_low", "ci95_high"))]]
            + [
                [setup, ref, *(x for c in COMPARED for x in _difference_cells(differences[c]))]
                for setup, ref, differences in comparisons(rows)
            ],
        )
        atomic_write_csv(
            per_run,
            [["run", "setup", "seed", *FIGURES]]
            + [[run.path.name, run.setup, run.seed, *(run.values[c] for c in FIGURES)] for run in runs],
        )
    plot(rows, png)
    return md


def plot(rows: List[SetupRow], path: Path) -> None:
    """Target gain over the base against the source-domain change, one point per setup (± std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = next((r for r in rows if r.setup == BASE), None)
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
    for ax, kind in zip(axes, ("bbox", "segm")):
        for r in rows:
            if r.setup == BASE:
                continue
            y, ys = r.mean[f"target_{kind}_AP"], r.std[f"target_{kind}_AP"]
            x, xs = r.mean[f"source_change_{kind}_AP"], r.std[f"source_change_{kind}_AP"]
            if y is None:
                continue
            y = y - (base.mean[f"target_{kind}_AP"] or 0.0) if base else y
            x = 0.0 if x is None else x
            drawn = ax.errorbar(x, y, xerr=xs or 0.0, yerr=ys or 0.0, marker="o", capsize=3, label=r.setup)
            if r.curve:  # the same runs with the adapter scaled down: WiSE-FT's curve, scale 1 the point above
                base_y = base.mean[f"target_{kind}_AP"] or 0.0 if base else 0.0
                xs_ = [r.curve[c][f"source_change_{kind}_AP"] for c in r.curve]
                ys_ = [r.curve[c][f"target_{kind}_AP"] - base_y for c in r.curve]
                color = drawn.lines[0].get_color()
                ax.plot(xs_, ys_, ls="--", lw=1, color=color, label=f"{r.setup}, adapter scale 0 → 1")
                for c, cx, cy in zip(r.curve, xs_, ys_):
                    ax.annotate(f"{c:g}", (cx, cy), textcoords="offset points", xytext=(3, -9), fontsize=6, color=color)
        ax.axvline(0.0, color="grey", lw=0.8)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xlabel(f"source-domain {kind} AP change (tuned − base)")
        ax.set_ylabel(f"target-domain {kind} AP gain over the base" if base else f"target-domain {kind} AP")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside the points, never on them
    fig.suptitle("what each setup gains on the target domain and loses on the source domain (mean ± std)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), 1 << 20)
    plt.close(fig)


class WriteSweepReport(Callback):
    """Hydra callback: the report, once every run of the multirun has finished (any launcher,
    SLURM included: the submitit launchers return when their jobs have)."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            md = write_report(sweep_dir)
        except UserError as e:  # the runs are done and kept; only the table is missing
            log.warning("no sweep report: %s", e)
            return
        log.info("\n%s\nsweep report: %s (.csv, _runs.csv, .png)", md.read_text(), md)
