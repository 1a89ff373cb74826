"""``python -m sam3_lora.train``: fine-tune SAM3 with LoRA, as composed by Hydra.

Steps: prepare and validate the data; build the model (base weights loaded); score
the frozen base on the held-out split; inject LoRA; train with periodic evaluation
and checkpoints; score the best adapter on the held-out split; print the comparison.
Scores are COCO AP and the SA-Co metrics; each model's SA-Co score threshold is chosen on
``valid`` (the base: scored on valid first; the tuned model: at its best validation).
Everything lands in the run directory (``outputs/<date>/<time>`` by default).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sam3_lora.core.conf import CONF_DIR
from sam3_lora.core.device import resolve_device, seed_everything
from sam3_lora.core.errors import UserError, exit_on_user_error
from sam3_lora.data.coco import build_dataset, build_loader
from sam3_lora.data.config import SPLIT_NAMES, DatasetConfig, Split
from sam3_lora.data.validate import cleaned_path, validate_and_clean
from sam3_lora.evaluation import saco
from sam3_lora.evaluation.coco import Evaluator
from sam3_lora.hf.model_card import DatasetFacts, run_card
from sam3_lora.lora import count_trainable, inject_lora, parameter_summary, save_adapter
from sam3_lora.models.base_checkpoint import BaseCheckpointError, resolve_checkpoint
from sam3_lora.models.sam3_layout import save_sam3_checkpoint
from sam3_lora.runs import layout
from sam3_lora.training import checkpoint as ckpt
from sam3_lora.training import distributed
from sam3_lora.training.distributed import DistInfo
from sam3_lora.training.loss import build_sam3_loss
from sam3_lora.training.settings import check_train_config
from sam3_lora.training.trainer import Trainer, TrainerConfig

log = logging.getLogger("sam3_lora.train")


@dataclass
class Splits:
    train: Optional[Split]  # None for a dataset that is only scored (retention)
    valid: Optional[Split]
    test: Optional[Split]

    def heldout(self, preferred: str = "test") -> Tuple[str, Optional[Split]]:
        """The split to score: ``preferred`` when present, else valid."""
        name = preferred if getattr(self, preferred) is not None else "valid"
        return name, getattr(self, name)


def prepare_data(
    dataset: DatasetConfig, run_dir: Path, validate: bool = True, data_dir: str = "data", heldout_only: bool = False
) -> Splits:
    """Generate toy data if asked, then validate each split (cleaned copies go to ``run_dir/data_dir``).
    ``heldout_only``: valid and test only (a dataset that is scored, never trained on).

    ``validate=False`` (DDP ranks other than 0): rank 0 has generated and checked the data
    already; take its cleaned copies where it wrote any, without reading every image again.
    """
    if validate:
        dataset.ensure_generated()
    out: Dict[str, Optional[Split]] = {}
    for name in SPLIT_NAMES:
        spec = dataset.split(name)
        if spec is None or (name != "train" and not spec.exists()) or (name == "train" and heldout_only):
            out[name] = None
            continue
        if validate:
            ann_file, report = validate_and_clean(
                spec.ann_file, spec.img_folder, run_dir / data_dir, name, check_images=dataset.validate.check_images
            )
            log.info("data %s", report.summary())
        else:
            cleaned = cleaned_path(run_dir / data_dir, name)
            ann_file = str(cleaned) if cleaned.is_file() else spec.ann_file
        out[name] = Split(ann_file=ann_file, img_folder=spec.img_folder)
    return Splits(**out)


class PreflightError(UserError, ValueError):
    """Things missing before any work starts (all listed at once)."""


def preflight(cfg: DictConfig, dataset: DatasetConfig) -> None:
    """Check the checkpoint and the data exist before building anything heavy."""
    problems = []
    if cfg.model.name == "sam3" and not cfg.model.get("random_init"):
        try:
            resolve_checkpoint(cfg.model.checkpoint_path, cfg.model.load_from_hub)
        except BaseCheckpointError as e:
            problems.append(str(e))
    if dataset.generate is None and not dataset.train.exists():
        problems.append(
            f"No training data at '{dataset.train.ann_file}'.\n  Put a COCO export in Roboflow's layout at {dataset.root}/"
            "{train,valid,test}/_annotations.coco.json (images beside each file), or set dataset.root=/path/to/export "
            "(or dataset.train.ann_file / dataset.train.img_folder); dataset=toy trains on generated shapes."
        )
    if problems:
        raise PreflightError("cannot start:\n- " + "\n- ".join(problems))


def run(cfg: DictConfig, run_dir: Path, run_name: str = "", sweep_group: Optional[str] = None) -> Dict:
    """Train as configured. Under torchrun or SLURM tasks every process calls this; rank 0
    prepares data, evaluates, logs and writes, the others train their shard."""
    check_train_config(cfg)
    dataset: DatasetConfig = instantiate(cfg.dataset)
    preflight(cfg, dataset)
    info = distributed.init_distributed()
    if not info.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        return _run(cfg, dataset, Path(run_dir), run_name, sweep_group, info)
    finally:
        distributed.shutdown(info)


def _run(
    cfg: DictConfig, dataset: DatasetConfig, run_dir: Path, run_name: str, sweep_group: Optional[str], info: DistInfo
) -> Dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    config_dict = OmegaConf.to_container(cfg, resolve=True)
    # The checkpoint to continue, read (never unpickled) and compared with these settings
    # before any data is read or model built.
    resume = ckpt.find_resume(run_dir, cfg.trainer.resume, cfg.trainer.auto_resume)
    if resume is not None:
        ckpt.check_same_settings(resume, config_dict, run_dir, restore_record=info.is_main)
    seed_everything(cfg.seed, cfg.trainer.deterministic)
    tcfg: TrainerConfig = instantiate(cfg.trainer)
    if info.is_main:  # generate / validate once; the others read what rank 0 wrote
        splits = prepare_data(dataset, run_dir)
    distributed.barrier(info)
    if not info.is_main:
        splits = prepare_data(dataset, run_dir, validate=False)
    model = instantiate(cfg.model)
    base_name = cfg.model.name
    image_size, num_queries = model.image_size, model.transformer.decoder.num_queries
    # The final score's split (final_eval.split), falling back to valid when it is absent.
    heldout_name, heldout = splits.heldout(cfg.final_eval.split)
    # The retention dataset (a second domain, or absent concepts): scored, never trained on.
    retention = instantiate(cfg.retention) if cfg.get("retention") else None
    retention_splits = None
    if retention is not None and info.is_main:
        retention_splits = prepare_data(retention, run_dir, data_dir="data/retention", heldout_only=True)
    device = resolve_device(tcfg.device)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)  # one GPU per process
    tcfg.device = str(device)

    def evaluator(split: Split) -> Evaluator:
        ds = build_dataset(split, image_size, training=False, category_chunk_size=dataset.eval_category_chunk)
        return Evaluator(split.ann_file, build_loader(ds, tcfg.batch_size, False, tcfg.num_workers), tcfg.max_dets)

    def threshold_on_valid(m, dev, autocast=None, of: Splits = splits, scored: str = heldout_name) -> Optional[float]:
        """The SA-Co score threshold chosen on valid (of ``of``) for ``m``; None (chosen on the scored
        split itself) when valid is the scored split or absent."""
        if of.valid is None or scored == "valid":
            return None
        return evaluator(of.valid)(m, dev, autocast)[saco.THRESHOLD_KEY]

    def score_retention(m, dev, autocast=None) -> Dict[str, float]:
        """The retention dataset's held-out split, at the threshold chosen on its own valid split."""
        threshold = threshold_on_valid(m, dev, autocast, of=retention_splits, scored=retention_split_name)
        return evaluator(retention_split)(m, dev, autocast, score_threshold=threshold)

    results: Dict[str, Dict[str, float]] = {}
    base_file = run_dir / layout.BASE_METRICS
    retention_base_file = run_dir / layout.RETENTION_BASE_METRICS
    if retention_splits is not None:
        retention_split_name, retention_split = retention_splits.heldout()
        if retention_split is None:
            raise PreflightError(f"retention dataset '{retention.name}' has neither a test nor a valid split")
    # Scoring the base draws from torch's random stream (the loaders' seeds): forked, so LoRA's
    # initialisation and the training order are the same whether or not the base is scored.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if cfg.final_eval.compare_base and heldout is not None and info.is_main:
            if base_file.is_file():  # a resumed run: the base was scored before training started
                results["base"] = json.loads(base_file.read_text())
            else:
                model.to(device)
                results["base"] = evaluator(heldout)(model, device, score_threshold=threshold_on_valid(model, device))
                base_file.write_text(json.dumps(results["base"]))
        if retention_splits is not None and not retention_base_file.is_file():  # a resumed run scored it already
            retention_base_file.write_text(json.dumps(score_retention(model.to(device), device)))

    if cfg.lora:
        report = inject_lora(model, instantiate(cfg.lora, _convert_="all"))
        log.info(report.describe())

        def save(m, tag):
            save_adapter(m, run_dir / layout.adapter_file(tag), base_model=base_name)
    else:
        log.info("no LoRA configured: fine-tuning every weight")

        def save(m, tag):  # sam3.pt layout, loadable as model.checkpoint_path
            save_sam3_checkpoint(m, run_dir / layout.full_weights_file(tag))

    log.info("trainable parameters by part:\n%s", parameter_summary(model))

    train_ds = build_dataset(
        splits.train,
        image_size,
        training=True,
        num_hard_negatives=dataset.num_hard_negatives,
        max_ann_per_img=dataset.max_ann_per_img,
        hflip=dataset.augment.hflip,
        scale_min=dataset.augment.scale_min,
    )
    train_loader = build_loader(
        train_ds, tcfg.batch_size, True, tcfg.num_workers, seed=cfg.seed, world_size=info.world_size, rank=info.rank
    )
    loggers = instantiate(cfg.logger, _convert_="all")(
        run_dir=run_dir,
        config=config_dict,
        run_name=run_name or run_dir.name,
        is_main=info.is_main,
        default_group=sweep_group,
    )
    # Across ranks the box count is all-reduced, so every rank's loss is normalised alike.
    loss_fn = build_sam3_loss(num_queries, normalization="global" if info.enabled else "local")
    trainer = Trainer(
        model=model,
        loss_fn=loss_fn,
        make_optimizer=instantiate(cfg.optimizer),
        make_scheduler=instantiate(cfg.scheduler),
        train_loader=train_loader,
        evaluator=evaluator(splits.valid) if splits.valid else None,
        loggers=loggers,
        run_dir=run_dir,
        cfg=tcfg,
        save_weights=save,
        dist_info=info,
        run_record=ckpt.run_record(run_dir, config_dict),
        resume_from=resume,
    )
    log.info(
        "effective batch %d (batch_size %d x grad_accum %d x %d process(es)), lr %g, %d optimizer steps",
        tcfg.batch_size * tcfg.grad_accum * info.world_size,
        tcfg.batch_size,
        tcfg.grad_accum,
        info.world_size,
        cfg.optimizer.lr,
        trainer.total_steps,
    )
    fit = trainer.fit()
    if not info.is_main:
        return {"results": {}, "best_val": fit["best"]}

    notes = []
    if heldout is not None:
        best = run_dir / ckpt.CHECKPOINT_DIR / ckpt.BEST
        threshold = None
        if best.is_file():
            state = ckpt.load(best)
            ckpt.load_trainable_state(model, state["trainable"], best)
            # best.pt is written right after the evaluation that made it the best: its last entry
            threshold = (state.get("history") or [{}])[-1].get(saco.THRESHOLD_KEY)
        tuned_source = "recorded at its best validation evaluation"
        if threshold is None:  # no validation recorded one (no valid split, or an older checkpoint)
            threshold = threshold_on_valid(model, trainer.device, trainer.autocast())
            tuned_source = "chosen on valid after training (its checkpoint recorded none)"
        results["lora" if cfg.lora else "finetuned"] = evaluator(heldout)(
            model, trainer.device, trainer.autocast(), score_threshold=threshold
        )
        notes.append(threshold_note(heldout_name, splits.valid is not None, tuned_source))
    retained = None
    if retention_splits is not None:
        tuned_score = score_retention(model, trainer.device, trainer.autocast())
        retained = retention_summary(
            retention.name, retention_split_name, json.loads(retention_base_file.read_text()), tuned_score
        )
        loggers.log_metrics({f"retention/{k}": v for k, v in tuned_score.items()}, trainer.step)
        loggers.log_metrics({f"retention/change/{k}": v for k, v in retained["change"].items()}, trainer.step)
    ann_files = {name: split.ann_file for name, split in vars(splits).items() if split is not None}
    summary = {
        "heldout_split": heldout_name,
        "results": results,
        "wall_time_s": fit["wall_time_s"],
        "trainable_parameters": count_trainable(model),
        "best_val": fit["best"],
        "images_per_s": fit["images_per_s"],
        "peak_memory_gb": fit["peak_memory_gb"],
        "world_size": info.world_size,
        "overrides": run_name,
        "seed": cfg.seed,
        "step_time_s": fit["step_time_s"],
        "dataset": asdict(DatasetFacts.from_annotations(dataset.name, dataset.root, ann_files)),
        "notes": notes,
    }
    if retained is not None:
        summary["retention"] = retained
    (run_dir / layout.RESULTS).write_text(json.dumps(summary, indent=1))
    run_card(run_dir).write(run_dir / layout.MODEL_CARD)
    hparams = {
        "lora": config_dict.get("lora") or {},
        "lr": cfg.optimizer.lr,
        "batch": tcfg.batch_size * tcfg.grad_accum * info.world_size,
    }
    final = results.get("lora") or results.get("finetuned") or {}
    loggers.log_hparams(hparams, {f"hparam/{k}": v for k, v in final.items() if k.endswith(("/AP", "/AP50", "/cgF1"))})
    loggers.finish()
    log.info("\n%s", results_table(results, heldout_name, run_dir, lora=bool(cfg.lora), retention=retained))
    return summary


def retention_summary(name: str, split: str, base: Dict[str, float], tuned: Dict[str, float]) -> Dict:
    """The retention dataset's scores before and after tuning, and their change (tuned - base;
    negative = forgotten). A stat COCOeval could not score (-1) has no change."""
    change = {k: tuned[k] - base[k] for k in tuned if k in base and tuned[k] >= 0 and base[k] >= 0}
    return {"dataset": name, "split": split, "base": base, "tuned": tuned, "change": change}


def threshold_note(heldout: str, has_valid: bool, tuned_source: str) -> str:
    """Where the SA-Co score thresholds of the held-out figures were chosen."""
    if not has_valid:
        return (
            f"SA-Co: no valid split: each model's score threshold (saco/threshold) was chosen on the held-out "
            f"'{heldout}' split itself, so its IL_MCC / pmF1 / cgF1 are optimistic"
        )
    if heldout == "valid":
        return "SA-Co: the held-out split is valid: each model's score threshold (saco/threshold) is chosen on it"
    return (
        "SA-Co: each model's score threshold (saco/threshold) was chosen on 'valid' (the base's: scored on valid "
        f"first; the tuned model's: {tuned_source}), then used on '{heldout}'"
    )


# The columns of the final comparison: (header, metric key).
RESULT_COLUMNS = (
    ("bbox AP", "bbox/AP"),
    ("bbox AP50", "bbox/AP50"),
    ("segm AP", "segm/AP"),
    ("segm AP50", "segm/AP50"),
    ("segm cgF1", "segm/cgF1"),
    ("IL_MCC", "saco/IL_MCC"),
    ("segm pmF1", "segm/pmF1"),
)


def results_table(
    results: Dict[str, Dict[str, float]], split: str, run_dir: Path, lora: bool = True, retention: Optional[Dict] = None
) -> str:
    """The held-out comparison, one row per model; '-' where a figure is undefined (-1) or was not
    recorded (a base scored by an older version); the SA-Co score threshold last. With ``retention``,
    the retention dataset's base, tuned and change rows below."""

    def cell(m: Dict[str, float], key: str, width: int, digits: int = 3) -> str:
        v = m.get(key)
        return f"{'-' if v is None or v == -1 else f'{v:.{digits}f}':>{width}}"

    header = f"{f'held-out {split!r} split':<26}" + "".join(f"{h:>{len(h) + 3}}" for h, _ in RESULT_COLUMNS)
    lines = [header + f"{'threshold':>12}"]
    labels = {"base": "frozen base", "lora": "LoRA (best)", "finetuned": "fine-tuned (best)"}

    def row(label: str, m: Dict[str, float]) -> str:
        return f"{label:<26}" + "".join(cell(m, k, len(h) + 3) for h, k in RESULT_COLUMNS)

    for key, m in results.items():
        lines.append(row(labels[key], m) + cell(m, saco.THRESHOLD_KEY, 12, digits=2))
    if retention is not None:
        change = retention["change"]
        lines += [
            f"retention: '{retention['dataset']}' {retention['split']} split (change: tuned - base)",
            row("frozen base", retention["base"]) + cell(retention["base"], saco.THRESHOLD_KEY, 12, digits=2),
            row(labels["lora" if lora else "finetuned"], retention["tuned"])
            + cell(retention["tuned"], saco.THRESHOLD_KEY, 12, digits=2),
            f"{'change':<26}"
            + "".join(
                f"{'-' if change.get(k) is None else f'{change[k]:+.3f}':>{len(h) + 3}}" for h, k in RESULT_COLUMNS
            ),
        ]
    lines += [
        f"run directory: {run_dir}",
        f"  {'adapter' if lora else 'weights'}: {run_dir / layout.weights_file('best', lora)} "
        f"(last: {layout.weights_file('last', lora)})",
        f"  checkpoints: {run_dir / layout.CHECKPOINT_DIR}  log: {run_dir / layout.TRAINING_LOG}",
        f"  metrics: {run_dir / layout.RESULTS}  tensorboard: tensorboard --logdir {run_dir}",
        f"  model card: {run_dir / layout.MODEL_CARD}",
    ]
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> Optional[float]:
    hydra_cfg = HydraConfig.get()
    # The runs of one sweep share a wandb group: the sweep's directory.
    group = hydra_cfg.sweep.dir if hydra_cfg.mode == RunMode.MULTIRUN else None
    summary = run(cfg, Path(hydra_cfg.runtime.output_dir), run_name=hydra_cfg.job.override_dirname, sweep_group=group)
    return summary["best_val"]  # the sweep objective


if __name__ == "__main__":
    # Call the function from the imported module, not from __main__: the submitit launchers
    # pickle the task function, and only a module-level one pickles by reference.
    from sam3_lora.train import main as task

    task()
