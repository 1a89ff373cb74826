"""What a finished run reports: ``results.json`` (``runs/results.py``'s schema), the model card, the
hyper-parameter views of TensorBoard and wandb, and the comparison table printed at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from sam3_lora.data.prepare import PreparedDataset
from sam3_lora.evaluation import saco
from sam3_lora.hf.model_card import run_card
from sam3_lora.pipeline.scoring import RETENTION, TARGET, Scores
from sam3_lora.runs import layout
from sam3_lora.runs.results import LORA_LABEL, DatasetFacts, RunResults
from sam3_lora.tuning import TuningMethod, method_of_record

BASE_TITLE = "frozen base"
# The columns of the final comparison: (header, metric key).
RESULT_COLUMNS = (
    ("bbox AP", "bbox/AP"),
    ("bbox AP50", "bbox/AP50"),
    ("segm AP", "segm/AP"),
    ("segm AP50", "segm/AP50"),
    ("segm cgF1", "segm/cgF1"),
    ("IL_MCC", "saco/IL_MCC"),
    ("IL_FPR", "saco/IL_FPR"),
    ("segm pmF1", "segm/pmF1"),
)


def run_results(
    tuning: TuningMethod, scores: Dict[str, Scores], fit: dict, data: PreparedDataset, trainable: int, **facts
) -> RunResults:
    """``results.json``'s content. ``facts``: world_size, overrides, seed."""
    target = scores.get(TARGET)
    results = {}
    if target is not None:
        results = {k: v for k, v in (("base", target.base), (tuning.label, target.tuned)) if v is not None}
    retention = scores.get(RETENTION)
    return RunResults(
        results=results,
        heldout_split=target.split if target else None,
        tuning=tuning.record(),
        wall_time_s=fit["wall_time_s"],
        trainable_parameters=trainable,
        best_val=fit["best"],
        images_per_s=fit["images_per_s"],
        peak_memory_gb=fit["peak_memory_gb"],
        step_time_s=fit["step_time_s"],
        dataset=DatasetFacts.from_annotations(
            data.name, data.config.root, {n: s.ann_file for n, s in data.splits.items()}
        ),
        notes=_notes(scores, tuning),
        retention=None if retention is None else _retention(retention),
        **facts,
    )


def _notes(scores: Dict[str, Scores], tuning: TuningMethod) -> List[str]:
    """What each held-out figure rests on, each note naming the dataset and model it is about."""
    notes = []
    for role, s in scores.items():
        where = "" if role == TARGET else f"{role} '{s.dataset}', "
        for title, lines in ((BASE_TITLE, s.base_notes), (tuning.title, s.tuned_notes)):
            notes += [f"{where}{title}: {line}" for line in lines or []]
    return notes


def _retention(s: Scores) -> Dict:
    found = {"dataset": s.dataset, "split": s.split, "base": s.base, "tuned": s.tuned, "change": s.change()}
    if s.base_valid and s.tuned_valid:  # for choices made on valid splits (never on the held-out split)
        found["valid"] = {"base": s.base_valid, "tuned": s.tuned_valid}
    return found


def write_results(results: RunResults, run_dir: Path, loggers, step: int, lr: float, batch: int) -> None:
    """results.json, the model card; to the loggers the retention figures and the hyper-parameters
    (the LoRA settings, learning rate and effective batch) with the tuned model's held-out scores."""
    results.write(run_dir)
    run_card(run_dir).write(run_dir / layout.MODEL_CARD)
    if results.retention is not None:
        loggers.log_metrics({f"retention/{k}": v for k, v in results.retention["tuned"].items()}, step)
        loggers.log_metrics({f"retention/change/{k}": v for k, v in results.retention["change"].items()}, step)
    hparams = {"lora": results.tuning.get("config") or {}, "lr": lr, "batch": batch}  # the method's settings
    tuned = {f"hparam/{k}": v for k, v in results.tuned.items() if k.endswith(("/AP", "/AP50", "/cgF1"))}
    loggers.log_hparams(hparams, tuned)


def results_table(results: RunResults, run_dir: Path, tuning: Optional[TuningMethod] = None) -> str:
    """The held-out comparison, one row per model; '-' where a figure is undefined (-1) or was not
    recorded; the SA-Co score threshold last. With a retention dataset, its base, tuned and change
    rows below. ``tuning``: the run's method (default: the one results.json records)."""
    tuning = tuning or method_of_record(results.tuning or {"label": results.tuned_label or LORA_LABEL})
    if tuning is None:
        raise ValueError(f"{run_dir / layout.RESULTS} names no tuning method this package knows: {results.tuning}")
    header = f"{f'held-out {results.heldout_split!r} split':<26}" + "".join(
        f"{h:>{len(h) + 3}}" for h, _ in RESULT_COLUMNS
    )
    lines = [header + f"{'threshold':>12}"]
    titles = {"base": BASE_TITLE, tuning.label: tuning.title}
    lines += [_row(titles[key], m) for key, m in results.results.items()]
    retention = results.retention
    if retention is not None:
        change = retention["change"]
        lines += [
            f"retention: '{retention['dataset']}' {retention['split']} split (change: tuned - base)",
            _row(BASE_TITLE, retention["base"]),
            _row(tuning.title, retention["tuned"]),
            f"{'change':<26}"
            + "".join(
                f"{'-' if change.get(k) is None else f'{change[k]:+.3f}':>{len(h) + 3}}" for h, k in RESULT_COLUMNS
            ),
        ]
    lines += [
        f"run directory: {run_dir}",
        f"  {tuning.weights_kind}: {run_dir / tuning.weights_file('best')} (last: {tuning.weights_file('last')})",
        f"  checkpoints: {run_dir / layout.CHECKPOINT_DIR}  log: {run_dir / layout.TRAINING_LOG}",
        f"  metrics: {run_dir / layout.RESULTS}  tensorboard: tensorboard --logdir {run_dir}",
        f"  model card: {run_dir / layout.MODEL_CARD}",
    ]
    return "\n".join(lines)


def _cell(m: Optional[Dict[str, float]], key: str, width: int, digits: int = 3) -> str:
    v = (m or {}).get(key)
    return f"{'-' if v is None or v == -1 else f'{v:.{digits}f}':>{width}}"


def _row(title: str, m: Optional[Dict[str, float]]) -> str:
    cells = "".join(_cell(m, k, len(h) + 3) for h, k in RESULT_COLUMNS)
    return f"{title:<26}{cells}{_cell(m, saco.THRESHOLD_KEY, 12, digits=2)}"
