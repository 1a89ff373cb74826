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

import logging
import tempfile
from pathlib import Path
from typing import Dict, Optional, Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from sam3_lora.core.atomic_files import atomic_write_json, atomic_write_text, written_together
from sam3_lora.core.conf import CONF_DIR
from sam3_lora.core.device import resolve_device
from sam3_lora.core.errors import exit_on_user_error
from sam3_lora.core.outputs import check_output
from sam3_lora.data.prepare import MissingSplitError, prepare_dataset
from sam3_lora.evaluation import saco
from sam3_lora.evaluation.heldout import HeldoutScorer
from sam3_lora.pipeline.settings import check_use_settings, run_command
from sam3_lora.pipeline.tuned import load_tuned

log = logging.getLogger("sam3_lora.evaluate")

HEADLINE = ("AP", "AP50", "AP75", "APs", "APm", "APl")


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
        figures = (metrics[saco.IL_MCC_KEY], metrics[saco.IL_FPR_KEY], metrics[f"{iou}/pmF1"], metrics[f"{iou}/cgF1"])
        lines.append(f"{iou:<10}" + "".join(_fmt(v, 8) for v in figures))
    saco_columns = [("IL_MCC", "bbox", "IL_MCC"), ("IL_FPR", "bbox", "IL_FPR")] + [
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


def evaluate(cfg: DictConfig, dataset_given: bool = False) -> dict:
    """``dataset_given``: the command line set ``dataset`` (a run scored on another dataset, say its
    source domain): it replaces the run's own, and the files are named after it."""
    check_use_settings(cfg)  # a bad value stops before anything is built
    given = cfg.score_threshold
    check_output(_output_folder(cfg), "output", folder=True)
    tuned = load_tuned(cfg, dataset_given=dataset_given)
    if tuned.dataset is None:
        raise MissingSplitError("no dataset to score: pass run_dir=<a training run> or dataset.root=/path/to/export")
    device = resolve_device(cfg.device)
    splits = (cfg.split,) if given is not None or cfg.split == "valid" else (cfg.split, "valid")
    routed = tuned.tuned_concepts() if cfg.get("concept_routing") and tuned.adapter else None
    with tempfile.TemporaryDirectory(prefix="sam3_lora_eval_") as clean_dir:
        data = prepare_dataset(tuned.dataset, Path(clean_dir), splits=splits)
        data.require(cfg.split)
        scorer = HeldoutScorer(
            data, cfg.split, tuned.model.image_size, cfg.batch_size, cfg.num_workers, cfg.max_dets, routed
        )
        held = scorer.score(tuned.model.to(device), device, given=given)
    if routed is not None:
        held.notes.append(
            f"concept routing: categories other than {sorted(routed)} answered by the base (adapters off)"
        )
    score, report = held.score, data.reports[cfg.split]
    result = {
        "model": tuned.describe(),
        "split": cfg.split,
        "ann_file": report.ann_file,
        "metrics": score.metrics,
        "per_category": score.per_category,
        "per_category_saco": score.per_category_saco,
        "score_threshold": {"value": score.metrics[saco.THRESHOLD_KEY], "chosen_on": held.threshold_chosen_on},
        "num_detections": score.num_detections,
        "num_images": report.num_images,
        "adapter_scale": tuned.adapter_scale,
        "concept_routing": sorted(routed) if routed is not None else None,
        "notes": tuned.notes + held.notes,
    }
    out_dir = _output_folder(cfg)
    on = f"{tuned.dataset.name}_" if dataset_given and cfg.run_dir else ""
    stem = f"eval_{on}{cfg.split}{'_base' if tuned.adapter is None else ''}"
    title = f"{tuned.describe()} on '{cfg.split}' ({report.ann_file}, {report.num_images} images)"
    source = "as given" if held.threshold_chosen_on is None else f"chosen on '{held.threshold_chosen_on}'"
    text = table(title, score.metrics, score.per_category, result["notes"], score.per_category_saco, source)
    with written_together():
        atomic_write_json(out_dir / f"{stem}.json", result)
        atomic_write_text(out_dir / f"{stem}.txt", text + "\n")
    log.info("\n%s\nwritten: %s", text, out_dir / f"{stem}.json")
    return result


def _output_folder(cfg: DictConfig) -> Path:
    """Where the figures go: ``output=``, else the run directory, else the adapter's folder."""
    return Path(cfg.output or cfg.run_dir or (Path(cfg.adapter).parent if cfg.adapter and not cfg.base else "."))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    overrides = HydraConfig.get().overrides.task
    evaluate(cfg, dataset_given=any(o.lstrip("+~").split("=")[0].split(".")[0] == "dataset" for o in overrides))


if __name__ == "__main__":
    run_command(main)
