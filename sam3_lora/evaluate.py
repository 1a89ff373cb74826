"""``python -m sam3_lora.evaluate``: COCO AP and SA-Co metrics of a tuned (or base) model on a split.

Reports AP, AP50, AP75 and AP for small / medium / large objects, overall and per
category, from pycocotools' COCOeval, and the SA-Co metrics of the SAM3 paper (IL_MCC,
pmF1, cgF1 for bbox and segm, overall and per category, from sam3's CGF1Eval; see
``sam3_lora.evaluation.saco``) at one score threshold: ``score_threshold=`` as given, or
(null) the one chosen on the dataset's ``valid`` split for this model (one extra prediction
pass on valid; on the scored split itself, with a note, when that is valid or there is no
valid split). Writes ``eval_<split>[_base].json`` and a readable ``.txt`` table beside the
run (or adapter), and prints the table.

The split is validated exactly as training validates it (a split training would refuse
stops here too, with every problem listed); repairs are applied to a temporary copy, and
the table's notes say what was repaired and what the figures leave out.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from sam3_lora.core.conf import CONF_DIR
from sam3_lora.core.device import resolve_device
from sam3_lora.core.errors import UserError, exit_on_user_error
from sam3_lora.data.coco import build_dataset, build_loader
from sam3_lora.data.config import DatasetConfig, Split
from sam3_lora.data.validate import ValidationReport, validate_and_clean
from sam3_lora.evaluation import saco
from sam3_lora.evaluation.coco import coco_evaluate, predict
from sam3_lora.evaluation.saco import SacoEvaluation, saco_evaluate
from sam3_lora.runs.tuned import load_tuned

log = logging.getLogger("sam3_lora.evaluate")

HEADLINE = ("AP", "AP50", "AP75", "APs", "APm", "APl")


class SplitError(UserError, ValueError):
    """The requested split is not configured or its annotation file is missing."""


def _split(dataset: Optional[DatasetConfig], name: str, clean_dir: Path) -> tuple[Split, ValidationReport]:
    """The split, validated as training validates it; repaired annotations go to ``clean_dir``."""
    spec = dataset.split(name) if dataset is not None else None
    if spec is None or not spec.exists():
        where = spec.ann_file if spec is not None else f"dataset.{name}"
        raise SplitError(
            f"split '{name}' has no annotation file ({where}); pass split=valid or dataset.{name}.ann_file=..."
        )
    check_images = dataset.validate.check_images
    ann_file, report = validate_and_clean(spec.ann_file, spec.img_folder, clean_dir, name, check_images=check_images)
    return Split(ann_file, spec.img_folder), report


def data_notes(report: ValidationReport) -> List[str]:
    """What the figures rest on, when it is not the annotation file as it stands."""
    if not report.repaired:
        return []
    return [f"data: scored on a repaired copy of {report.ann_file} ({report.repairs()})"]


class ThresholdError(UserError, ValueError):
    """``score_threshold`` is neither null nor a number in [0, 1]."""


def _fmt(v: float, width: int) -> str:
    """A figure, or '-' where it is undefined (-1: no ground truth of that kind)."""
    return f"{'-' if v == -1 else f'{v:.3f}':>{width}}"


def table(
    title: str,
    metrics: Dict[str, float],
    per_category: Dict[str, Dict[str, float]],
    notes: Sequence[str] = (),
    saco_per_category: Optional[Dict[str, Dict[str, Dict[str, float]]]] = None,
    threshold_source: str = "",
) -> str:
    lines = [title, f"{'':<10}" + "".join(f"{h:>7}" for h in HEADLINE)]
    for iou in ("bbox", "segm"):
        lines.append(f"{iou:<10}" + "".join(_fmt(metrics[f"{iou}/{h}"], 7) for h in HEADLINE))
    lines += ["", f"SA-Co at score threshold {metrics[saco.THRESHOLD_KEY]:.2f} ({threshold_source})"]
    lines.append(f"{'':<10}" + "".join(f"{h:>8}" for h in saco.PER_CATEGORY_STATS))
    for iou in ("bbox", "segm"):
        figures = (metrics[saco.IL_MCC_KEY], metrics[f"{iou}/pmF1"], metrics[f"{iou}/cgF1"])
        lines.append(f"{iou:<10}" + "".join(_fmt(v, 8) for v in figures))
    saco_columns = [("IL_MCC", "bbox", "IL_MCC")] + [
        (f"{iou} {stat}", iou, stat) for iou in ("bbox", "segm") for stat in ("pmF1", "cgF1")
    ]
    header = f"{'category':<24}{'bbox AP':>9}{'segm AP':>9}"
    if saco_per_category:
        header += "".join(f"{h:>{len(h) + 2}}" for h, _, _ in saco_columns)
    lines += ["", header]
    for name in per_category["bbox"]:
        row = f"{name:<24}{_fmt(per_category['bbox'][name], 9)}{_fmt(per_category['segm'][name], 9)}"
        if saco_per_category:
            row += "".join(_fmt(saco_per_category[iou][name][stat], len(h) + 2) for h, iou, stat in saco_columns)
        lines.append(row)
    lines.append("('-': no ground truth of that kind in the split; SA-Co figures on the 0..1 scale, the paper's x100)")
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def _detections(tuned, split: Split, cfg: DictConfig, device) -> List[dict]:
    dataset = build_dataset(
        split, tuned.model.image_size, training=False, category_chunk_size=tuned.dataset.eval_category_chunk
    )
    loader = build_loader(dataset, cfg.batch_size, False, cfg.num_workers)
    return predict(tuned.model.to(device), loader, device, cfg.max_dets)


def _given_threshold(cfg: DictConfig) -> Optional[float]:
    value = cfg.get("score_threshold")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ThresholdError(
            f"score_threshold={value!r}: a detection score in [0, 1], or null to choose it on the valid split"
        )
    return float(value)


def score_threshold(
    cfg: DictConfig, tuned, device, clean_dir: Path
) -> Tuple[Optional[float], Optional[str], List[str]]:
    """The SA-Co score threshold for ``cfg.split``: ``(threshold, chosen_on, notes)``. As given
    (chosen_on None); else chosen on the dataset's valid split for this model (one prediction pass
    on valid); None (chosen on the scored split itself) when that is valid or there is no valid split."""
    given = _given_threshold(cfg)
    if given is not None:
        return given, None, []
    if cfg.split == "valid":
        return None, "valid", ["SA-Co: split=valid: the score threshold is chosen on the split it scores"]
    spec = tuned.dataset.split("valid") if tuned.dataset is not None else None
    if spec is None or not spec.exists():
        return (
            None,
            cfg.split,
            [
                f"SA-Co: no valid split: the score threshold was chosen on '{cfg.split}' itself, so IL_MCC / pmF1 / "
                "cgF1 are optimistic (pass score_threshold= to fix one)"
            ],
        )
    valid, report = _split(tuned.dataset, "valid", clean_dir)
    threshold = SacoEvaluation(valid.ann_file, _detections(tuned, valid, cfg, device)).choose_threshold()
    notes = [f"SA-Co: score threshold chosen on 'valid' ({report.ann_file}, {report.num_images} images) for this model"]
    if report.repaired:
        notes.append(f"data (valid): the threshold was chosen on a repaired copy of it ({report.repairs()})")
    return threshold, "valid", notes


def evaluate(cfg: DictConfig, dataset_given: bool = False) -> dict:
    """``dataset_given``: the command line set ``dataset`` (a run scored on another dataset, say its
    source domain): it replaces the run's own, and the files are named after it."""
    _given_threshold(cfg)  # a bad value stops before anything is built
    tuned = load_tuned(cfg, dataset_given=dataset_given)
    if tuned.dataset is not None:
        tuned.dataset.ensure_generated()
    with tempfile.TemporaryDirectory(prefix="sam3_lora_eval_") as clean_dir:
        split, report = _split(tuned.dataset, cfg.split, Path(clean_dir))
        device = resolve_device(cfg.device)
        threshold, chosen_on, threshold_notes = score_threshold(cfg, tuned, device, Path(clean_dir))
        detections = _detections(tuned, split, cfg, device)
        metrics, per_category, eval_notes = coco_evaluate(split.ann_file, detections)
        sa_co = saco_evaluate(split.ann_file, detections, threshold)
    metrics.update(sa_co.metrics)
    notes = data_notes(report) + eval_notes + sa_co.notes + threshold_notes
    result = {
        "model": tuned.describe(),
        "split": cfg.split,
        "ann_file": report.ann_file,
        "metrics": metrics,
        "per_category": per_category,
        "per_category_saco": sa_co.per_category,
        "score_threshold": {"value": sa_co.threshold, "chosen_on": chosen_on},
        "num_detections": len(detections),
        "num_images": report.num_images,
        "notes": notes,
    }
    out_dir = Path(cfg.output or cfg.run_dir or (tuned.adapter.parent if tuned.adapter else "."))
    on = f"{tuned.dataset.name}_" if dataset_given and cfg.run_dir else ""
    stem = f"eval_{on}{cfg.split}{'_base' if tuned.adapter is None else ''}"
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{tuned.describe()} on '{cfg.split}' ({report.ann_file}, {report.num_images} images)"
    source = "as given" if chosen_on is None else f"chosen on '{chosen_on}'"
    text = table(title, metrics, per_category, notes, sa_co.per_category, source)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out_dir / f"{stem}.txt").write_text(text + "\n")
    log.info("\n%s\nwritten: %s", text, out_dir / f"{stem}.json")
    return result


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    overrides = HydraConfig.get().overrides.task
    evaluate(cfg, dataset_given=any(o.lstrip("+~").split("=")[0].split(".")[0] == "dataset" for o in overrides))


if __name__ == "__main__":
    main()
