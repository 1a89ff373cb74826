"""Where a training run stands, and its checkpoints: what one holds, how it is written, how a
run resumes from one.

``RunState`` keeps the run's position (epochs, optimizer steps, batches of the current epoch),
its validation scores and the timing of its earlier sessions. A checkpoint holds these with the
trainable tensors, optimizer, scheduler, scaler and random-number state; the best files are
written before last.pt and an improved score is recorded only once they are, so a failed write
leaves files and score as they were.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Dict, Iterator, Optional
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from sam3_lora.core.atomic_files import WriteError, atomic_save, atomic_write_json, written_together
from sam3_lora.runs import layout
from sam3_lora.speed.text_cache import restore_text_cache_entries, text_cache_entries
from sam3_lora.training import checkpoint as ckpt
from sam3_lora.training.step_log import SessionThroughput

# The loop's own logger name: training.log shows every line of the loop under one name.
log = logging.getLogger("sam3_lora.training.trainer")


class RunState:
    """The run's position and scores over all its sessions, and its checkpoints: ``state`` builds
    one, ``save`` writes them (rank 0, once the caller has checked the weights and the lock),
    ``resume`` restores one."""

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        scaler: torch.amp.GradScaler,
        total_steps: int,
        run_dir: Path,
        save_weights: Callable[[nn.Module, str], None],
        save_every: int,
        run_record: Optional[dict],
        session: SessionThroughput,
    ):
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.total_steps = total_steps
        self.run_dir = run_dir
        self.ckpt_dir = run_dir / ckpt.CHECKPOINT_DIR
        self.save_weights = save_weights  # (model, "best" | "last"): the shippable adapter or weights
        self.save_every = save_every
        self.run_record = run_record  # the run's settings, kept in each checkpoint (ckpt.run_record)
        self.session = session
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.batches_done = 0  # batches of the current epoch already trained (after a mid-epoch save)
        self.epoch_rng: Optional[dict] = None  # every random stream as the current epoch began
        self._resumed_rng: Optional[dict] = None  # the streams a mid-epoch checkpoint saved, until replayed
        self.best: Optional[float] = None
        self.pending_best: Optional[float] = None  # an improved score, recorded once its files are written
        self.history: list = []
        # The run's sessions before this one (from the checkpoint): a resumed run reports its whole
        # training time, and one resumed after its last step keeps the figures it trained with.
        self.earlier = {"train_s": 0.0, "wall_s": 0.0, "images": 0, "steps": 0}

    @property
    def last_checkpoint(self) -> Path:
        return self.ckpt_dir / ckpt.LAST

    def state(self, best: Optional[float] = None) -> dict:
        return {
            "format": ckpt.FORMAT,
            "format_version": ckpt.FORMAT_VERSION,
            "trainable": ckpt.trainable_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": ckpt.rng_state(),
            "epoch_rng": self.epoch_rng,
            "text_cache": text_cache_entries(self.model),
            "epoch": self.epoch,
            "step": self.step,
            "batches_done": self.batches_done,
            "best": self.best if best is None else best,
            "history": self.history,
            "run": self.run_record,
            "timing": self.timing(),
        }

    def timing(self) -> Dict[str, float]:
        """Training time, wall time, images (this process's) and optimizer steps over every session so far."""
        session = self.session
        return {
            "train_s": self.earlier["train_s"] + session.train_s,
            "wall_s": self.earlier["wall_s"] + time.time() - session.started,
            "images": self.earlier["images"] + session.images,
            "steps": self.earlier["steps"] + self.step - session.first_step,
        }

    def resume(self, resume_from: Optional[ckpt.Resume]) -> Optional[Path]:
        if resume_from is None:
            return None
        path, state = resume_from.path, resume_from.state
        ckpt.load_trainable_state(self.model, state["trainable"], path)
        self.optimizer.load_state_dict(state["optimizer"])
        self._load_schedule(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        restore_text_cache_entries(self.model, state.get("text_cache", []))
        self.epoch, self.step, self.best = state["epoch"], state["step"], state["best"]
        self.batches_done = state.get("batches_done", 0)
        if self.batches_done:
            self.epoch_rng, self._resumed_rng = state.get("epoch_rng"), state["rng"]
        self.history = state.get("history", [])
        self.earlier = {**self.earlier, **state.get("timing", {})}
        log.info("resumed from %s at epoch %d (+%d batches), step %d", path, self.epoch, self.batches_done, self.step)
        return path

    def epoch_batches(self, loader: DataLoader) -> Iterator:
        """The current epoch's batches from where the run stands.

        After a mid-epoch checkpoint the epoch's start is replayed: the random streams as the epoch
        began (so the loader seeds its workers alike), the batches already trained loaded again and
        dropped (so each worker loads what it loaded, and its own stream is where it was), then the
        streams as saved. With the same ``trainer.num_workers`` the rest of the epoch is the
        uninterrupted run's, bit for bit on CPU; the replay costs loading those batches once more."""
        loader.sampler.set_epoch(self.epoch)
        if not self.batches_done:
            self.epoch_rng = ckpt.rng_state()
            return iter(loader)
        if self.epoch_rng is not None:  # a checkpoint from before epoch_rng was saved: same samples, other draws
            ckpt.set_rng_state(self.epoch_rng)
        batches = iter(loader)
        for _ in range(self.batches_done):
            next(batches)
        if self._resumed_rng is not None:
            ckpt.set_rng_state(self._resumed_rng)
            self._resumed_rng = None
        return batches

    def _load_schedule(self, saved: dict) -> None:
        """The checkpoint's scheduler position; its shape follows this run's config, which may
        differ from the checkpoint's only in trainer.max_epochs / max_steps (checked before)."""
        current = self.scheduler.state_dict()
        if saved.get("lr_lambdas") == current.get("lr_lambdas"):
            self.scheduler.load_state_dict(saved)
            return
        self.scheduler.load_state_dict({**saved, "lr_lambdas": current["lr_lambdas"]})
        # Continue at the rate the new schedule gives this step (the optimizer holds the old one).
        sched = self.scheduler
        for group, base_lr, factor in zip(self.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
            group["lr"] = base_lr * factor(sched.last_epoch)
        log.info(
            "the run length changed: learning-rate schedule recomputed for %d optimizer steps, continuing at step %d",
            self.total_steps,
            self.scheduler.last_epoch,
        )

    def figures(self, world_size: int) -> Dict[str, Optional[float]]:
        """The run's wall time, best score and throughput over every session so far."""
        t = self.timing()
        trained = t["steps"] > 0 and t["train_s"] > 0  # none: a checkpoint from before timing was kept
        return {
            "wall_time_s": t["wall_s"],
            "best": self.best,
            "images_per_s": t["images"] * world_size / t["train_s"] if trained else None,
            # Seconds per optimizer step over the run's sessions, evaluation and checkpoints excluded.
            "step_time_s": t["train_s"] / t["steps"] if trained else None,
        }

    def record_evaluation(self, metrics: Dict[str, float], best_metric: str) -> float:
        """An evaluation: kept in the history, and an improved ``best_metric`` held until ``save``
        has written the best files. Returns the best score so far."""
        value = metrics.get(best_metric)
        if value is None:
            raise KeyError(f"trainer.best_metric '{best_metric}' is not computed; choose from {sorted(metrics)}")
        improved = self.best is None or value > self.best
        self.pending_best = value if improved else None  # recorded by save() once the best files are written
        self.history.append({"epoch": self.epoch, "step": self.step, **metrics})
        return value if improved else self.best

    def write_history(self) -> None:
        atomic_write_json(self.run_dir / layout.METRICS, self.history)

    def save(self, metrics: Optional[Dict[str, float]], mid_epoch: bool) -> None:
        try:
            self._save(metrics, mid_epoch)
        except WriteError as e:
            raise WriteError(
                f"{e} Free space in the run directory {self.run_dir}, or copy it to a disk with room and run the "
                f"same command with hydra.run.dir=<the copy>: training resumes from its last good checkpoint."
            ) from e

    def _save(self, metrics: Optional[Dict[str, float]], mid_epoch: bool) -> None:
        if not mid_epoch and metrics is not None and self.pending_best is not None:
            # The best files (both or neither) first, the score recorded (self.best, then last.pt)
            # only once they are written: a failed write leaves files and score as they were.
            with written_together():
                atomic_save(self.state(best=self.pending_best), self.ckpt_dir / ckpt.BEST)
                self.save_weights(self.model, "best")
            self.best, self.pending_best = self.pending_best, None
        state = self.state()
        atomic_save(state, self.last_checkpoint)
        if mid_epoch:
            return
        if self.save_every and self.epoch % self.save_every == 0:
            atomic_save(state, self.ckpt_dir / f"epoch_{self.epoch:04d}.pt")
        self.save_weights(self.model, "last")
