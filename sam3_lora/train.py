"""``python -m sam3_lora.train``: fine-tune SAM3 (LoRA, full fine-tuning, or a method of your own), as
composed by Hydra.

A run, top to bottom (:func:`train`): check the settings (``pipeline/settings.py``: every group built
into its typed object: the tuning method, trainer settings, datasets, keeping method); find the
checkpoint it continues; prepare the data and what the keeping method needs; build the base model;
put the trunk cache in front of a trunk that will stay frozen; score the frozen base on the held-out
splits; apply the tuning; prepare the model for training; build the keeping term and the trainer;
fit; score the best tuned model (at each adapter scale asked for); write the results. Each step is one
call into the library: ``pipeline/`` (settings, readiness, model setup, scoring, results),
``tuning/``, ``data/``, ``training/``, ``runs/``. Everything lands in the run directory
(``outputs/<date>/<time>`` by default).
"""

from __future__ import annotations

import functools
import logging
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sam3_lora.benchmarks.run import readiness
from sam3_lora.core.conf import CONF_DIR
from sam3_lora.core.device import seed_everything
from sam3_lora.core.errors import exit_on_user_error
from sam3_lora.core.outputs import check_output
from sam3_lora.data.prepare import PreparedDataset, prepare_dataset
from sam3_lora.evaluation.heldout import Evaluator
from sam3_lora.evaluation.saco import THRESHOLD_KEY
from sam3_lora.lora import count_trainable, parameter_summary
from sam3_lora.pipeline import tradeoff
from sam3_lora.pipeline.model_setup import cache_trunk, eval_loader_settings, prepare_model, training_device
from sam3_lora.pipeline.readiness import own_run_directory, require_ready
from sam3_lora.pipeline.results import results_table, run_results, write_results
from sam3_lora.pipeline.scoring import score_base, score_tuned, scored_datasets
from sam3_lora.pipeline.settings import RunSettings, check_settings, run_command
from sam3_lora.runs import layout
from sam3_lora.runs.lock import RunDirectoryLock
from sam3_lora.training import checkpoint as ckpt
from sam3_lora.training import distributed
from sam3_lora.training.config import TrainerConfig
from sam3_lora.training.distributed import DistInfo
from sam3_lora.training.keeping import KeepingTerm
from sam3_lora.training.trainer import Trainer
from sam3_lora.training.trainer_factory import build_trainer

log = logging.getLogger("sam3_lora.train")


def run(cfg: DictConfig, run_dir: Path, run_name: str = "", sweep_group: Optional[str] = None) -> Dict:
    """Train as configured. Under torchrun or SLURM tasks every process calls this; rank 0 prepares
    the data, scores, logs and writes, the others train their shard. ``run_name``: the overrides
    that name a sweep point (empty for a single run)."""
    settings = check_settings(cfg)  # every setting, all problems at once, nothing built
    if settings.benchmark is not None and sweep_group is not None:
        what, ready, detail = readiness(settings.benchmark)
        if not ready:  # one dataset of a benchmark multirun: the others run, the table lists this one
            log.error("%s: not run (the multirun goes on; its table lists the dataset): %s", what, detail)
            return {"results": {}, "best_val": None}
    require_ready(cfg.model, settings.dataset, settings.benchmark)  # base weights and training data are there
    check_output(run_dir, "hydra.run.dir", folder=True)  # and the run directory can take its files
    info = distributed.init_distributed()
    if not info.is_main:  # rank 0 speaks for the run
        logging.getLogger().setLevel(logging.WARNING)
    try:
        with own_run_directory(Path(run_dir), settings.trainer.stale_lock_s, info) as lock:
            return train(settings, Path(run_dir), run_name, sweep_group, info, lock)
    finally:
        distributed.shutdown(info)


def train(
    s: RunSettings,
    run_dir: Path,
    run_name: str,
    sweep_group: Optional[str],
    info: DistInfo,
    lock: Optional[RunDirectoryLock],
) -> Dict:
    """The steps of a run, in order (see the module docstring); ``lock``: rank 0's hold on the run directory."""
    record = OmegaConf.to_container(s.config, resolve=True)
    resume = continued_checkpoint(s.trainer, record, run_dir, info)
    seed_everything(s.seed, s.trainer.deterministic)
    target, retention = prepare_data(s, run_dir, info)
    if s.preserve is not None:
        s.preserve.prepare(target, retention, run_dir, info)  # before any model is built or scored
    model = instantiate(s.config.model)
    trunk_cache = cache_trunk(model, s.trainer, s.tuning, s.dataset, run_dir)
    device = training_device(s.trainer, info)
    loader_settings = eval_loader_settings(model, s.trainer)
    scored = scored_datasets(run_dir, target, retention, s.final_eval.split, s.final_eval.compare_base, loader_settings)
    if info.is_main:
        score_base(scored, model, device)
    s.tuning.apply(model)
    log.info("trainable parameters by part:\n%s", parameter_summary(model))
    prepare_model(model, s.trainer, device)
    keeping = None
    if s.preserve is not None:
        keeping = s.preserve.build(model, s.tuning, model.image_size, s.trainer.num_workers, s.seed, info)
    trainer = trainer_for_run(s, model, target, run_dir, run_name, sweep_group, info, resume, device, record, lock, keeping)
    log_schedule(s, info, trainer.total_steps)
    fit = trainer.fit()
    if not info.is_main:
        return {"results": {}, "best_val": fit["best"]}
    scored_model = scored_checkpoint(s.final_eval.checkpoint, model, run_dir)  # its weights, its validation
    scores = score_tuned(scored, model, device, trainer.autocast(), (scored_model or {}).get(THRESHOLD_KEY))
    curve = scale_curve(s, model, target, retention, device, loader_settings)
    facts = dict(world_size=info.world_size, device=device.type, overrides=run_name, seed=s.seed, adapter_scales=curve)
    facts["trunk_cache"] = trunk_cache.stats() if trunk_cache is not None else None
    facts["preserve"] = s.preserve.record() if s.preserve is not None else None
    results = run_results(s.tuning, scores, fit, target, count_trainable(model), **facts)
    write_results(results, run_dir, trainer.loggers, trainer.step, s.config.optimizer.lr, effective_batch(s, info))
    trainer.loggers.finish()
    if trunk_cache is not None and not s.trainer.trunk_cache_dir:
        shutil.rmtree(run_dir / layout.TRUNK_CACHE_DIR, ignore_errors=True)  # the run's own: only a cache
    log.info("\n%s", results_table(results, run_dir, s.tuning))
    return results.to_dict()


def continued_checkpoint(t: TrainerConfig, record: Dict, run_dir: Path, info: DistInfo) -> Optional[ckpt.Resume]:
    """The checkpoint this run continues (``trainer.resume``, else its own ``last.pt``), read (never
    unpickled) and compared with these settings before any data is read or model built."""
    resume = ckpt.find_resume(run_dir, t.resume, t.auto_resume)
    if resume is not None:
        ckpt.check_same_settings(resume, record, run_dir, restore_record=info.is_main)
    return resume


def prepare_data(s: RunSettings, run_dir: Path, info: DistInfo) -> Tuple[PreparedDataset, Optional[PreparedDataset]]:
    """The target dataset (validated by rank 0, whose cleaned copies the other ranks take) and the
    retention dataset (held-out splits only; rank 0 alone scores it)."""
    if info.is_main:
        target = prepare_dataset(s.dataset, run_dir / "data", data_seed=s.data_seed)
    distributed.barrier(info)
    if not info.is_main:
        target = prepare_dataset(s.dataset, run_dir / "data", validate=False)
    retention = None
    if s.retention is not None and info.is_main:
        retention = prepare_dataset(s.retention, run_dir / "data" / "retention", splits=("valid", "test"))
    return target, retention


def scored_checkpoint(which: str, model, run_dir: Path) -> Optional[dict]:
    """Load the weights ``final_eval.checkpoint`` scores (``best``: the best validation's; ``last``:
    the final step's) into ``model``; return the validation they were chosen by (its SA-Co threshold)."""
    return ckpt.restore_best(model, run_dir) if which == "best" else ckpt.restore_last(model, run_dir)


def scale_curve(s: RunSettings, model, target, retention, device, loader_settings) -> Optional[List[dict]]:
    """``final_eval.adapter_scales``: the best model at each adapter scale on both held-out splits."""
    scales = s.final_eval.adapter_scales
    if not scales:
        return None
    if retention is None or not s.tuning.scalable:
        log.info("final_eval.adapter_scales: skipped (it needs LoRA adapters and a retention dataset)")
        return None
    curve = tradeoff.scan(model, target, retention, [*scales, 1.0], 0.0, device, loader_settings)
    return [{"scale": p.scale, "target": p.target, "retention": p.retention} for p in curve.points]


def effective_batch(s: RunSettings, info: DistInfo) -> int:
    return s.trainer.batch_size * s.trainer.grad_accum * info.world_size


def validation(target: PreparedDataset, image_size: int, t: TrainerConfig) -> Optional[Evaluator]:
    """The periodic evaluation on the target's valid split, if it has one."""
    valid = target.split("valid")
    if valid is None:
        return None
    return Evaluator(valid.ann_file, target.eval_loader("valid", image_size, t.batch_size, t.num_workers), t.max_dets)


def trainer_for_run(
    s: RunSettings,
    model,
    target: PreparedDataset,
    run_dir: Path,
    run_name: str,
    sweep_group: Optional[str],
    info: DistInfo,
    resume: Optional[ckpt.Resume],
    device,
    record: dict,
    lock: Optional[RunDirectoryLock],
    keeping: Optional[KeepingTerm],
) -> Trainer:
    """The loop over the target's training split, validating on its valid split; the optimizer,
    scheduler and logger groups' factories completed with what only this run knows."""
    t, size = s.trainer, model.image_size
    loggers = instantiate(s.config.logger, _convert_="all")
    return build_trainer(
        t,
        model,
        target.train_loader(size, t.batch_size, t.num_workers, s.seed, info.world_size, info.rank),
        make_optimizer=instantiate(s.config.optimizer),
        make_scheduler=instantiate(s.config.scheduler),
        run_dir=run_dir,
        device=device,
        evaluator=validation(target, size, t),
        loggers=loggers(
            run_dir=run_dir, config=record, run_name=run_name or run_dir.name, is_main=info.is_main, default_group=sweep_group
        ),
        save_weights=functools.partial(s.tuning.save, run_dir=run_dir, base_model=s.model_name),
        info=info,
        run_record=ckpt.run_record(run_dir, record),
        resume_from=resume,
        lock=lock,
        keeping=keeping,
    )


def log_schedule(s: RunSettings, info: DistInfo, total_steps: int) -> None:
    log.info(
        "effective batch %d (batch_size %d x grad_accum %d x %d process(es)), lr %g, %d optimizer steps",
        effective_batch(s, info),
        s.trainer.batch_size,
        s.trainer.grad_accum,
        info.world_size,
        s.config.optimizer.lr,
        total_steps,
    )


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

    run_command(task)
