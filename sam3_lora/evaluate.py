"""``python -m sam3_lora.evaluate``: COCO bbox and segm AP of a tuned (or base) model on a split.

Reports AP, AP50, AP75 and AP for small / medium / large objects, overall and per
category, from pycocotools' COCOeval; writes ``eval_<split>[_base].json`` and a readable
``.txt`` table beside the run (or adapter), and prints the table.

The split is validated exactly as training validates it (a split training would refuse
stops here too, with every problem listed); repairs are applied to a temporary copy, and
the table's notes say what was repaired and what the figures leave out.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import hydra
from omegaconf import DictConfig

from sam3_lora.core.conf import CONF_DIR
from sam3_lora.core.device import resolve_device
from sam3_lora.core.errors import UserError, exit_on_user_error
from sam3_lora.data.coco import build_dataset, build_loader
from sam3_lora.data.config import DatasetConfig, Split
from sam3_lora.data.validate import ValidationReport, validate_and_clean
from sam3_lora.evaluation.coco import coco_evaluate, predict
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


def table(
    title: str, metrics: Dict[str, float], per_category: Dict[str, Dict[str, float]], notes: Sequence[str] = ()
) -> str:
    def fmt(v: float) -> str:
        return f"{v:7.3f}" if v >= 0 else "      -"

    lines = [title, f"{'':<10}" + "".join(f"{h:>7}" for h in HEADLINE)]
    for iou in ("bbox", "segm"):
        lines.append(f"{iou:<10}" + "".join(fmt(metrics[f"{iou}/{h}"]) for h in HEADLINE))
    lines += ["", f"{'category':<24}{'bbox AP':>9}{'segm AP':>9}"]
    for name in per_category["bbox"]:
        lines.append(f"{name:<24}{fmt(per_category['bbox'][name]):>9}{fmt(per_category['segm'][name]):>9}")
    lines.append("('-': no ground truth of that kind in the split)")
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def evaluate(cfg: DictConfig) -> dict:
    tuned = load_tuned(cfg)
    with tempfile.TemporaryDirectory(prefix="sam3_lora_eval_") as clean_dir:
        split, report = _split(tuned.dataset, cfg.split, Path(clean_dir))
        device = resolve_device(cfg.device)
        dataset = build_dataset(
            split,
            tuned.model.image_size,
            training=False,
            category_chunk_size=tuned.dataset.eval_category_chunk,
        )
        detections = predict(
            tuned.model.to(device), build_loader(dataset, cfg.batch_size, False, cfg.num_workers), device, cfg.max_dets
        )
        metrics, per_category, eval_notes = coco_evaluate(split.ann_file, detections)
    notes = data_notes(report) + eval_notes
    result = {
        "model": tuned.describe(),
        "split": cfg.split,
        "ann_file": report.ann_file,
        "metrics": metrics,
        "per_category": per_category,
        "num_detections": len(detections),
        "num_images": report.num_images,
        "notes": notes,
    }
    out_dir = Path(cfg.output or cfg.run_dir or (tuned.adapter.parent if tuned.adapter else "."))
    stem = f"eval_{cfg.split}{'_base' if tuned.adapter is None else ''}"
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{tuned.describe()} on '{cfg.split}' ({report.ann_file}, {report.num_images} images)"
    text = table(title, metrics, per_category, notes)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out_dir / f"{stem}.txt").write_text(text + "\n")
    log.info("\n%s\nwritten: %s", text, out_dir / f"{stem}.json")
    return result


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
