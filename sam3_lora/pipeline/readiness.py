"""What must hold before a run starts, beyond valid settings: the base weights and the training data are
there (``train`` stops on any of them, all listed at once, before anything is built; ``check`` prints
each as a line, beside the machine's own checks), and no other training owns the run directory.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from sam3_lora.benchmarks.run import BenchmarkRun, readiness
from sam3_lora.core.errors import UserError
from sam3_lora.data.config import DatasetConfig
from sam3_lora.models.base_checkpoint import BaseCheckpointError
from sam3_lora.runs.lock import RunDirectoryBusy, RunDirectoryLock
from sam3_lora.training import distributed
from sam3_lora.training.distributed import DistInfo

Check = Tuple[str, bool, str]  # (what, ok, detail)


class PreflightError(UserError, ValueError):
    """Things missing before any work starts (all listed at once)."""


def base_weights(model: DictConfig) -> Check:
    """Where the ``model`` section's weights come from (its schema says: ``weights()``)."""
    try:
        return "base checkpoint", True, OmegaConf.to_object(model).weights()
    except BaseCheckpointError as e:
        return "base checkpoint", False, str(e)


def training_data(dataset: DatasetConfig) -> Check:
    if dataset.generate is not None:
        return "data: train", True, f"toy shapes, generated at {dataset.root} on first use"
    if not dataset.train.exists():
        return (
            "data: train",
            False,
            f"No training data at '{dataset.train.ann_file}' (needed).\n  Put a COCO export in Roboflow's layout at "
            f"{dataset.root}/{{train,valid,test}}/_annotations.coco.json (images beside each file), or set "
            "dataset.root=/path/to/export (or dataset.train.ann_file / dataset.train.img_folder); dataset=toy trains "
            "on generated shapes.",
        )
    return "data: train", True, dataset.train.ann_file


def require_ready(model: DictConfig, dataset: DatasetConfig, benchmark: Optional[BenchmarkRun] = None) -> None:
    """Raise a :class:`PreflightError` listing what is missing."""
    checks = [base_weights(model)] + ([readiness(benchmark)] if benchmark is not None else []) + [training_data(dataset)]
    failed = [detail for _, ok, detail in checks if not ok]
    if failed:
        raise PreflightError("cannot start:\n- " + "\n- ".join(failed))


@contextlib.contextmanager
def own_run_directory(run_dir: Path, stale_lock_s: float, info: DistInfo) -> Iterator[Optional[RunDirectoryLock]]:
    """Hold the run directory's lock while training (rank 0 takes it for the run's processes); every
    rank stops, before anything is written, when another training owns the directory."""
    lock = RunDirectoryLock(run_dir, stale_lock_s) if info.is_main else None
    refused: Optional[RunDirectoryBusy] = None
    if lock is not None:
        try:
            lock.acquire()
        except RunDirectoryBusy as e:
            refused = e
    if distributed.any_rank(refused is not None, info):
        raise refused or RunDirectoryBusy(f"{run_dir} is being trained by another run (see rank 0's message)")
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
