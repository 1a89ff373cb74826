"""A benchmark's table over its multirun: box AP per dataset and setup, the mean over datasets, the
super-category means (RF100-VL), the paper's figures in their own columns, trainable parameters and
device-hours per setup.

Written when a benchmark experiment's multirun ends (:class:`WriteBenchmarkTable`, the callback the
experiments name) or by hand: ``python -m sam3_lora.benchmark table multirun/<date>/<time>``.

Every cell is the mean over seeds, with its 95% t interval when there are two or more
(``runs/intervals.py``). The mean over datasets is taken per seed, then summarised over seeds; it
is over the datasets that have a figure, and says how many of the benchmark's that is. A dataset
the manifest does not list as prepared, or whose run is missing or failed (a run directory without
``results.json``), is listed under the table by name, never averaged in silently. Each setup is
also compared with Meta's recipe (``recipe=meta_full_ft``) dataset by dataset: the mean paired
difference over datasets with its 95% interval (what holds across datasets, not across seeds).
The column of each setup names the model it scored: ``last`` (the final step's, as Meta scores)
or ``best`` (the best validation's, as this project keeps).
"""

from __future__ import annotations

import logging
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sam3_lora.benchmarks.catalog import benchmark
from sam3_lora.benchmarks.manifest import OK, ManifestError, read_manifest
from sam3_lora.core.atomic_files import atomic_write, atomic_write_csv, atomic_write_text, written_together
from sam3_lora.core.errors import UserError
from sam3_lora.runs import layout
from sam3_lora.runs.intervals import Summary, paired_difference, summarize
from sam3_lora.runs.results import RunResults
from sam3_lora.runs.sweep_report import override_parts

log = logging.getLogger("sam3_lora.benchmark")

BASE = "frozen base (zero-shot)"
REFERENCE = "recipe=meta_full_ft"
FIGURES = (("bbox AP", "bbox/AP"), ("segm AP", "segm/AP"), ("segm cgF1", "segm/cgF1"))
TABLE_FILES = ("benchmark_table.md", "benchmark_table.csv", "benchmark_table_runs.csv", "benchmark_table.png")


class BenchmarkTableError(UserError, ValueError):
    """No benchmark run to make a table of."""


@dataclass
class BenchmarkRunRecord:
    path: Path
    benchmark: str
    prepared: str
    dataset: str
    setup: str
    seed: Optional[int]
    checkpoint: str
    shots: Optional[int]
    base: Dict[str, float]
    tuned: Dict[str, float]
    trainable: Optional[int]
    hours: Optional[float]
    on_gpu: bool
    train_sha256: Optional[str]


@dataclass
class Collected:
    runs: List[BenchmarkRunRecord] = field(default_factory=list)
    failed: List[str] = field(default_factory=list)  # run directories without a readable results.json


def _config(run_dir: Path) -> Optional[dict]:
    path = run_dir / ".hydra" / "config.yaml"
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def read_run(run_dir: Path, config: dict) -> BenchmarkRunRecord:
    r = RunResults.read(run_dir / layout.RESULTS)
    b = config["benchmark"]
    parts = [p for p in override_parts(r.overrides) if not p.startswith(("seed=", "benchmark.dataset="))]
    on_gpu = (r.device or "").startswith("cuda")
    train = ((r.dataset.splits if r.dataset else {}) or {}).get("train") or {}
    return BenchmarkRunRecord(
        path=run_dir,
        benchmark=b["name"],
        prepared=_prepared(run_dir, b["prepared"]),
        dataset=b["dataset"],
        setup=",".join(parts) or "(defaults)",
        seed=r.seed,
        checkpoint=(config.get("final_eval") or {}).get("checkpoint", "best"),
        shots=b.get("shots"),
        base=r.base,
        tuned=r.tuned,
        trainable=r.trainable_parameters,
        hours=None if r.wall_time_s is None else r.wall_time_s * (r.world_size or 1) / 3600,
        on_gpu=on_gpu,
        train_sha256=train.get("sha256"),
    )


def _prepared(run_dir: Path, prepared: str) -> str:
    """The prepared folder a run read: a relative path is the run's, from the directory it was started in."""
    if Path(prepared).is_absolute():
        return prepared
    try:
        cwd = yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]["runtime"]["cwd"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return prepared
    return str(Path(cwd) / prepared)


def collect(sweep_dir: Path) -> Collected:
    """The benchmark runs below ``sweep_dir`` (directories holding ``.hydra/config.yaml`` with a
    ``benchmark`` section); those without a readable ``results.json`` as failed."""
    found = Collected()
    for config_file in sorted(Path(sweep_dir).glob("*/.hydra/config.yaml")):
        run_dir = config_file.parent.parent
        config = _config(run_dir)
        if not config or not config.get("benchmark"):
            continue
        if not (run_dir / layout.RESULTS).is_file():
            found.failed.append(f"{run_dir.name}: no {layout.RESULTS} (failed or unfinished; see its training.log)")
            continue
        try:
            found.runs.append(read_run(run_dir, config))
        except (UserError, KeyError, TypeError) as e:
            found.failed.append(f"{run_dir.name}: {e}")
    if not found.runs:
        why = f" ({'; '.join(found.failed)})" if found.failed else ""
        raise BenchmarkTableError(f"no finished benchmark run under {sweep_dir}{why}")
    # a setup is named by what varies: overrides every run shares (debug=..., say) are left out, but
    # never its recipe (the reference is recipe=meta_full_ft whatever else ran)
    shared = set.intersection(*(set(r.setup.split(",")) for r in found.runs)) if len(found.runs) > 1 else set()
    shared = {p for p in shared if not p.startswith("recipe=")}
    for r in found.runs:
        r.setup = ",".join(p for p in r.setup.split(",") if p not in shared) or "(defaults)"
    return found


# ------------------------------------------------------------------------------------ figures
@dataclass
class Table:
    benchmark: str
    datasets: List[str]  # the benchmark's datasets the manifest lists as prepared, in catalog order
    not_prepared: List[str]  # "name: status: problem"
    setups: List[str]  # BASE first
    checkpoints: Dict[str, str]
    # figure key -> setup -> dataset -> seed -> value
    values: Dict[str, Dict[str, Dict[str, Dict[object, float]]]]
    missing_runs: List[str]
    failed: List[str]
    has_masks: Dict[str, bool]
    groups: Dict[str, List[str]]  # super-category -> datasets
    trainable: Dict[str, Optional[int]]
    hours: Dict[str, Tuple[float, bool]]  # setup -> (hours, all on GPU)
    shots: Optional[int]
    notes: List[str]

    def cell(self, key: str, setup: str, dataset: str) -> Summary:
        return summarize(list(self.values[key].get(setup, {}).get(dataset, {}).values()))

    def mean_over_datasets(self, key: str, setup: str) -> Tuple[Summary, List[str]]:
        """Per seed, the mean over the datasets that have a figure; then over seeds. Returns it and
        the datasets it is over."""
        by_dataset = self.values[key].get(setup, {})
        present = [d for d in self.datasets if by_dataset.get(d)]
        per_seed: Dict[object, List[float]] = defaultdict(list)
        for d in present:
            for seed, v in by_dataset[d].items():
                per_seed[seed].append(v)
        # only seeds with every present dataset: a seed missing a dataset would mean another average
        means = [statistics.fmean(vs) for vs in per_seed.values() if len(vs) == len(present)]
        return summarize(means), present

    def over_datasets(self, key: str, setup: str, datasets: Sequence[str]) -> Summary:
        """The mean over ``datasets`` of each dataset's mean over seeds, with a t interval over datasets."""
        by_dataset = self.values[key].get(setup, {})
        return summarize([statistics.fmean(by_dataset[d].values()) for d in datasets if by_dataset.get(d)])

    def paired_over_datasets(self, key: str, setup: str, reference: str):
        """``setup − reference``, dataset by dataset (each the mean over its seeds)."""

        def means(s):
            return {d: statistics.fmean(v.values()) for d, v in self.values[key].get(s, {}).items() if v}

        return paired_difference(means(setup), means(reference))


def build(sweep_dir: Path) -> Table:
    found = collect(sweep_dir)
    names = sorted({r.benchmark for r in found.runs})
    if len(names) > 1:
        raise BenchmarkTableError(f"{sweep_dir}: runs of several benchmarks ({', '.join(names)}); one table each")
    bench = benchmark(names[0])
    prepared = sorted({r.prepared for r in found.runs})
    try:
        manifest = read_manifest(Path(prepared[0]))
        entries = {d["name"]: d for d in manifest["datasets"]}
    except ManifestError as e:
        log.warning("benchmark table: %s", e)
        entries = {}
    notes = [] if entries else [f"the manifest was not read, so datasets never run are not listed: {prepared[0]}"]
    if len(prepared) > 1:
        notes.append(f"the runs read {len(prepared)} prepared folders ({', '.join(prepared)}); the first's manifest is used")
    ran = {r.dataset for r in found.runs}
    datasets = [n for n in bench.names if (entries.get(n, {}).get("status") == OK) or n in ran]
    not_prepared = [
        f"{n}: {entries[n]['status']}: {entries[n]['problem'].splitlines()[0]}"
        if n in entries
        else f"{n}: not in the manifest"
        for n in bench.names
        if n not in datasets
    ]
    setups = [BASE] + sorted({r.setup for r in found.runs}, key=lambda s: (s != REFERENCE, s))
    values: Dict[str, Dict[str, Dict[str, Dict[object, float]]]] = {
        key: defaultdict(lambda: defaultdict(dict)) for _, key in FIGURES
    }
    base_seen: Dict[Tuple[str, str], List[float]] = defaultdict(list)
    for r in found.runs:
        for _, key in FIGURES:
            if key in r.tuned:
                values[key][r.setup][r.dataset][r.seed] = r.tuned[key]
            if key in r.base:
                base_seen[(key, r.dataset)].append(r.base[key])
    for (key, dataset), scores in base_seen.items():
        # the frozen base scored by every run of a dataset: one figure (they agree unless the data differs)
        values[key][BASE][dataset][None] = statistics.fmean(scores)
        if max(scores) - min(scores) > 1e-9:
            notes.append(f"{dataset}: the runs' frozen-base {key} differ ({min(scores):.4f}-{max(scores):.4f}); their mean is shown")
    expected_seeds = sorted({r.seed for r in found.runs}, key=str)
    missing_runs = []
    for setup in setups[1:]:
        for d in datasets:
            have = set(values["bbox/AP"][setup].get(d, {}))
            missing_runs += [f"{d}, {setup}, seed {s}" for s in expected_seeds if s not in have]
    checkpoints = {s: ", ".join(sorted({r.checkpoint for r in found.runs if r.setup == s})) for s in setups[1:]}
    _check_training_sets(found.runs, entries, notes)
    groups: Dict[str, List[str]] = defaultdict(list)
    if bench.group_by:
        for layout_ in bench.datasets:
            if layout_.name in datasets:
                groups[layout_.super_category].append(layout_.name)
    hours = {}
    for s in setups[1:]:
        runs = [r for r in found.runs if r.setup == s and r.hours is not None]
        hours[s] = (sum(r.hours for r in runs), bool(runs) and all(r.on_gpu for r in runs))
    trainable = {s: next((r.trainable for r in found.runs if r.setup == s), None) for s in setups[1:]}
    shots = next((r.shots for r in found.runs), None)
    has_masks = {d: bool(entries.get(d, {}).get("has_masks")) for d in datasets}
    return Table(
        bench.name, datasets, not_prepared, setups, checkpoints, values, missing_runs, found.failed,
        has_masks, dict(groups), trainable, hours, shots, notes,
    )


def _check_training_sets(runs: List[BenchmarkRunRecord], entries: Dict[str, dict], notes: List[str]) -> None:
    """Each run trained on the file the manifest lists (same SHA-256), or the table says otherwise."""
    for r in runs:
        entry = entries.get(r.dataset)
        if not entry or entry.get("status") != OK or r.train_sha256 is None:
            continue
        listed = {entry["splits"]["train"]["sha256"]} | {f.get("sha256") for f in entry.get("few_shot", [])}
        if r.train_sha256 not in listed:
            notes.append(f"{r.path.name}: trained on a file the manifest does not list (prepared again since?)")


# ------------------------------------------------------------------------------------ writing
def _fmt(s: Summary, scale: float = 100.0) -> str:
    """AP as the paper prints it (x100), with the interval over seeds when there is one."""
    if s.mean is None:
        return "—"
    if s.low is None:
        return f"{scale * s.mean:.1f}" + (" (n=1)" if s.n == 1 else "")
    return f"{scale * s.mean:.1f} [{scale * s.low:.1f}, {scale * s.high:.1f}]"


def _header(t: Table, setup: str) -> str:
    return setup if setup == BASE else f"{setup} ({t.checkpoints[setup]})"


def markdown(t: Table) -> str:
    bench = benchmark(t.benchmark)
    shots = f"{t.shots}-shot" if t.shots else "all training images"
    lines = [
        f"# {bench.title}, {shots}: box AP on each dataset's test split (x100)",
        "",
        "Each cell: the mean over seeds, with its 95% t interval over seeds where there are two or more "
        "(n=1: one seed, no interval). In brackets after each setup: the model it scored (last: the final "
        "step's, as Meta's configs score; best: the best validation's).",
        "",
    ]
    heads = [_header(t, s) for s in t.setups]
    lines += ["| dataset | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for d in t.datasets:
        lines.append(f"| {d} | " + " | ".join(_fmt(t.cell("bbox/AP", s, d)) for s in t.setups) + " |")
    mean_cells, spans = [], []
    for s in t.setups:
        summary, present = t.mean_over_datasets("bbox/AP", s)
        mean_cells.append(_fmt(summary))
        spans.append(len(present))
    span = f"{min(spans)}" if min(spans) == max(spans) else f"{min(spans)}-{max(spans)}"
    lines.append(f"| **mean over {span} of {len(bench.datasets)} datasets** | " + " | ".join(mean_cells) + " |")
    lines += ["", *_paper_lines(t, bench)]
    if t.groups:
        lines += ["", f"## Mean per {bench.group_by} (over its datasets here; interval over datasets)", ""]
        lines += ["| " + bench.group_by + " | datasets | " + " | ".join(heads) + " |", "|---" * (len(heads) + 2) + "|"]
        for group, members in sorted(t.groups.items()):
            cells = [_fmt(t.over_datasets("bbox/AP", s, members)) for s in t.setups]
            lines.append(f"| {group} | {len(members)} | " + " | ".join(cells) + " |")
    masked = [d for d in t.datasets if t.has_masks.get(d)]
    if masked:
        lines += ["", f"## Masks: segm AP and cgF1 (x100), on the {len(masked)} dataset(s) with masks", ""]
        lines += ["| dataset | figure | " + " | ".join(heads) + " |", "|---" * (len(heads) + 2) + "|"]
        for d in masked:
            for label, key in FIGURES[1:]:
                lines.append(f"| {d} | {label} | " + " | ".join(_fmt(t.cell(key, s, d)) for s in t.setups) + " |")
    lines += ["", *_paired_lines(t), "", *_cost_lines(t), "", *_left_out_lines(t)]
    return "\n".join(lines).rstrip() + "\n"


def _paper_lines(t: Table, bench) -> List[str]:
    p = bench.paper
    tuned = p.ten_shot if t.shots else p.full
    spread = f" ± {p.ten_shot_std}" if t.shots and p.ten_shot_std is not None else ""
    here_base, _ = t.mean_over_datasets("bbox/AP", BASE)
    ref = REFERENCE if REFERENCE in t.setups else None
    here_ref = _fmt(t.mean_over_datasets("bbox/AP", ref)[0]) if ref else "not run"
    return [
        f"Against the paper ({p.source}); the paper's column is its own figure, not re-computed here:",
        "",
        "| | here | paper |",
        "|---|---|---|",
        f"| frozen base (zero-shot) | {_fmt(here_base)} | {p.zero_shot} |",
        f"| Meta's fine-tuning recipe ({'10-shot' if t.shots else 'full'}) | {here_ref} | {tuned}{spread} |",
    ]


def _paired_lines(t: Table) -> List[str]:
    if REFERENCE not in t.setups:
        return [f"No paired comparison: {REFERENCE} (the reference) has no runs here."]
    lines = [
        f"## Paired against {REFERENCE}: box AP difference (x100), dataset by dataset",
        "",
        "The mean over the datasets both have of (setup − reference), each dataset's figure its mean over "
        "seeds; the 95% t interval is over datasets. * where it excludes zero; within noise where it spans it.",
        "",
        "| setup | datasets | difference |",
        "|---|---|---|",
    ]
    for s in t.setups:
        if s == REFERENCE:
            continue
        d = t.paired_over_datasets("bbox/AP", s, REFERENCE)
        if d.summary.mean is None:
            lines.append(f"| {s} | 0 | — |")
            continue
        verdict = "*" if d.summary.excludes_zero else ("within noise" if d.summary.low is not None else "n=1")
        cell = _fmt(d.summary)
        lines.append(f"| {s} | {d.summary.n} | {cell} {verdict} |")
    return lines


def _cost_lines(t: Table) -> List[str]:
    lines = ["## Cost per setup", "", "| setup | trainable parameters | device-hours (all its runs) |", "|---|---|---|"]
    for s in t.setups[1:]:
        hours, gpu = t.hours[s]
        trainable = f"{t.trainable[s]:,}" if t.trainable[s] is not None else "—"
        lines.append(f"| {s} | {trainable} | {hours:.3f} {'GPU' if gpu else 'CPU'}-h |")
    return lines


def _left_out_lines(t: Table) -> List[str]:
    lines = []
    if t.not_prepared:
        lines += [f"Not prepared ({len(t.not_prepared)} of the benchmark's datasets, in no figure above):"]
        lines += [f"- {x}" for x in t.not_prepared[:20]]
        if len(t.not_prepared) > 20:
            lines.append(f"- ... and {len(t.not_prepared) - 20} more (see the manifest)")
    if t.missing_runs:
        lines += [f"Missing runs ({len(t.missing_runs)}; their cells are — or over fewer seeds):"]
        lines += [f"- {x}" for x in t.missing_runs]
    if t.failed:
        lines += [f"Failed or unfinished runs ({len(t.failed)}):"] + [f"- {x}" for x in t.failed]
    lines += [f"Note: {n}" for n in t.notes]
    return lines


def csv_rows(t: Table) -> List[list]:
    rows = [["dataset", "setup", "scored", "figure", "n", "mean", "std", "low", "high"]]
    for d in t.datasets:
        for s in t.setups:
            for _, key in FIGURES:
                c = t.cell(key, s, d)
                if c.mean is not None:
                    rows.append([d, s, t.checkpoints.get(s, ""), key, c.n, c.mean, c.std, c.low, c.high])
    for s in t.setups:
        summary, present = t.mean_over_datasets("bbox/AP", s)
        rows.append([f"mean over {len(present)} datasets", s, t.checkpoints.get(s, ""), "bbox/AP", summary.n,
                     summary.mean, summary.std, summary.low, summary.high])
    return rows


def run_rows(t: Table) -> List[list]:
    rows = [["dataset", "setup", "seed", "figure", "value"]]
    for _, key in FIGURES:
        for s, by_dataset in t.values[key].items():
            for d, by_seed in by_dataset.items():
                rows += [[d, s, seed, key, v] for seed, v in by_seed.items()]
    return rows


def plot(t: Table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(t.datasets) + 3), 4))
    width = 0.8 / len(t.setups)
    for i, s in enumerate(t.setups):
        means = [t.cell("bbox/AP", s, d).mean for d in t.datasets]
        xs = [j + i * width for j in range(len(t.datasets))]
        ax.bar(xs, [100 * (m or 0) for m in means], width, label=_header(t, s))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(t.datasets))])
    ax.set_xticklabels(t.datasets, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("box AP (x100), mean over seeds")
    ax.set_title(f"{benchmark(t.benchmark).title}: per dataset")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110), 1 << 20)
    plt.close(fig)


def write_table(sweep_dir) -> Path:
    sweep_dir = Path(sweep_dir)
    t = build(sweep_dir)
    md, table_csv, runs_csv, png = (sweep_dir / name for name in TABLE_FILES)
    with written_together():
        atomic_write_text(md, markdown(t))
        atomic_write_csv(table_csv, csv_rows(t))
        atomic_write_csv(runs_csv, run_rows(t))
    plot(t, png)
    return md


class WriteBenchmarkTable(Callback):
    """Hydra callback: the benchmark table when a benchmark experiment's multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            md = write_table(sweep_dir)
        except UserError as e:
            log.warning("benchmark table not written: %s", e)
            return
        log.info("benchmark table: %s\n%s", md, md.read_text())
