"""The training loop: SAM3's loss, AMP, accumulation, clipping, evaluation, checkpoints, resume.

One loop, readable top to bottom: ``fit`` -> epochs -> per optimizer step, ``grad_accum``
micro-batches (``_forward_backward``) then ``_optimizer_step``; after each epoch ``evaluate``
then ``save`` (which records an improved score only once the best files are written).
Trains the model it is handed, on its device, as it is (speed levers and activation
checkpointing are applied before): whatever requires a gradient, the LoRA adapter (and any
``modules_to_save``), or every weight under full fine-tuning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, Optional, Tuple

import torch
from torch import nn
from tqdm import tqdm

from sam3_lora.core.atomic_files import WriteError, atomic_save, remove_stale_temp_files, written_together
from sam3_lora.core.device import peak_memory_gb, resolve_amp
from sam3_lora.core.errors import UserError
from sam3_lora.evaluation.heldout import Evaluator
from sam3_lora.runs import layout
from sam3_lora.runs.lock import RunDirectoryLock, RunDirectoryLost
from sam3_lora.sam3_compat.matcher import NonFinitePredictions
from sam3_lora.training import checkpoint as ckpt
from sam3_lora.training import distributed
from sam3_lora.training.config import TrainerConfig
from sam3_lora.training.distill import Distillation
from sam3_lora.training.distributed import DistInfo
from sam3_lora.training.loggers import Loggers
from sam3_lora.training.loss import compute_loss, core_loss

log = logging.getLogger(__name__)


class NonFiniteLossError(UserError, RuntimeError):
    """Training diverged: the loss stayed NaN/inf for several consecutive steps."""

    raised_on_every_rank = True  # the ranks agree on every batch's health: rank 0 reports it


class DivergedError(NonFiniteLossError):
    """The trainable weights became NaN/inf: no later batch can recover, so training stops."""


class Preempted(UserError, RuntimeError):
    """A stop signal arrived (SLURM time limit, preemption, scancel); the state was saved."""

    raised_on_every_rank = True


# A micro-batch's outcome, ordered by severity (the worst over the ranks decides for all).
FINITE, NON_FINITE_LOSS, NON_FINITE_PREDICTIONS = 0, 1, 2

# SLURM's warning before a time limit or preemption (submitit uses USR2, plain sbatch
# --signal often USR1) and the SIGTERM that precedes a kill.
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


class Trainer:
    def __init__(
        self,
        *,
        model: nn.Module,
        loss_fn: nn.Module,
        make_optimizer: Callable,
        make_scheduler: Callable,
        train_loader: torch.utils.data.DataLoader,
        evaluator: Optional[Evaluator],
        loggers: Loggers,
        run_dir: Path,
        cfg: TrainerConfig,
        save_weights: Callable[[nn.Module, str], None],
        device: torch.device,
        dist_info: DistInfo = DistInfo(),
        run_record: Optional[dict] = None,
        resume_from: Optional[ckpt.Resume] = None,
        lock: Optional[RunDirectoryLock] = None,
        preserve: Optional[Distillation] = None,
    ):
        self.cfg = cfg
        self.device = device
        self.amp_dtype = resolve_amp(cfg.amp, self.device)
        self.model = model
        self.loss_fn = loss_fn
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.params)
        self.steps_per_epoch = max(1, len(train_loader) // cfg.grad_accum)
        self.total_steps = cfg.max_epochs * self.steps_per_epoch
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.scheduler = make_scheduler(self.optimizer, total_steps=self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.train_loader = train_loader
        self.evaluator = evaluator
        self.loggers = loggers
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / ckpt.CHECKPOINT_DIR
        self.save_weights = save_weights  # (model, "best" | "last"): the shippable adapter or weights
        self.run_record = run_record  # the run's settings, kept in each checkpoint (ckpt.run_record)
        self.resume_from = resume_from  # the checkpoint to continue, already read and checked by the caller
        self.lock = lock  # rank 0's hold on the run directory: nothing is written once it is lost
        self.preserve = preserve  # preserve=distill: each micro-batch also matches the base on anchor images
        self.dist = dist_info
        self.is_main = dist_info.is_main
        # DDP all-reduces the trainable parameters' gradients; LoRA-only training leaves no
        # trainable parameter without a gradient, so unused-parameter search stays off.
        self.forward_module = self.model
        if dist_info.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index or 0] if self.device.type == "cuda" else None
            self.forward_module = DDP(self.model, device_ids=ids, find_unused_parameters=False)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.batches_done = 0  # batches of the current epoch already trained (after a mid-epoch save)
        self.stop_signal: Optional[int] = None
        self.images_seen, self.train_time = 0, 0.0  # this process's throughput, this session
        # The run's sessions before this one (from the checkpoint): a resumed run reports its whole
        # training time, and one resumed after its last step keeps the figures it trained with.
        self.earlier = {"train_s": 0.0, "wall_s": 0.0, "images": 0, "steps": 0}
        self.session_start, self.session_first_step = time.time(), 0
        self._previous_handlers: Dict[int, object] = {}
        self.best: Optional[float] = None
        self.pending_best: Optional[float] = None  # an improved score, recorded once its files are written
        self.bad_steps = 0  # consecutive non-finite losses, across epoch boundaries
        self.history: list = []

    # ---------------------------------------------------------------- setup
    def _weights_finite(self) -> bool:
        return not self.params or bool(torch.stack([torch.isfinite(p).all() for p in self.params]).all())

    def _stop_if_diverged(self) -> None:
        """Checked where a non-finite loss appears and before anything is evaluated or saved,
        so NaN weights are never written over the last good checkpoint."""
        if not self._weights_finite():
            self._diverged("the trainable weights hold NaN/inf")

    def _diverged(self, what: str) -> None:
        saved = self.ckpt_dir / ckpt.LAST
        raise DivergedError(
            f"training diverged at step {self.step} (epoch {self.epoch + 1}): {what}. Likely cause: the learning "
            f"rate is too high (optimizer.lr={self.optimizer.defaults.get('lr')!r}; LoRA usually trains at 1e-4 to "
            f"3e-3), trainer.clip_grad is off, or fp16 overflows (trainer.amp=bf16). Nothing was saved after this "
            + (f"point: {saved} holds the last saved state." if saved.is_file() else "point; nothing was saved before.")
            + " Start a new run with a lower optimizer.lr."
        )

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ---------------------------------------------------------------- checkpoints
    def state(self, best: Optional[float] = None) -> dict:
        return {
            "format": ckpt.FORMAT,
            "format_version": ckpt.FORMAT_VERSION,
            "trainable": ckpt.trainable_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": ckpt.rng_state(),
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
        return {
            "train_s": self.earlier["train_s"] + self.train_time,
            "wall_s": self.earlier["wall_s"] + time.time() - self.session_start,
            "images": self.earlier["images"] + self.images_seen,
            "steps": self.earlier["steps"] + self.step - self.session_first_step,
        }

    def resume(self) -> Optional[Path]:
        if self.resume_from is None:
            return None
        path, state = self.resume_from.path, self.resume_from.state
        ckpt.load_trainable_state(self.model, state["trainable"], path)
        self.optimizer.load_state_dict(state["optimizer"])
        self._load_schedule(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        self.epoch, self.step, self.best = state["epoch"], state["step"], state["best"]
        self.batches_done = state.get("batches_done", 0)
        self.history = state.get("history", [])
        self.earlier = {**self.earlier, **state.get("timing", {})}
        log.info("resumed from %s at epoch %d (+%d batches), step %d", path, self.epoch, self.batches_done, self.step)
        return path

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

    def save(self, metrics: Optional[Dict[str, float]], mid_epoch: bool = False) -> None:
        if not self.is_main:
            return
        self._stop_if_diverged()
        if self.lock is not None:
            self.lock.check()
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
        atomic_save(state, self.ckpt_dir / ckpt.LAST)
        if mid_epoch:
            return
        if self.cfg.save_every and self.epoch % self.cfg.save_every == 0:
            atomic_save(state, self.ckpt_dir / f"epoch_{self.epoch:04d}.pt")
        self.save_weights(self.model, "last")

    # ---------------------------------------------------------------- loop
    def fit(self) -> Dict[str, float]:
        if self.is_main:
            remove_stale_temp_files(self.ckpt_dir, self.run_dir)
        self.resume()
        self.session_start, self.session_first_step = time.time(), self.step
        self._install_signal_handlers()
        try:
            self._epochs()
        finally:
            self._restore_signal_handlers()
        if not distributed.replicas_in_sync(self.params, self.dist):
            raise RuntimeError("DDP replicas diverged: trainable weights differ across ranks")
        if self.dist.enabled:
            log.info("DDP: trainable weights identical on all %d ranks", self.dist.world_size)
        t = self.timing()
        trained = t["steps"] > 0 and t["train_s"] > 0  # none: a checkpoint from before timing was kept
        return {
            "wall_time_s": t["wall_s"],
            "best": self.best,
            "images_per_s": t["images"] * self.dist.world_size / t["train_s"] if trained else None,
            # Seconds per optimizer step over the run's sessions, evaluation and checkpoints excluded.
            "step_time_s": t["train_s"] / t["steps"] if trained else None,
            "peak_memory_gb": peak_memory_gb(self.device),
        }

    def _epochs(self) -> None:
        while self.epoch < self.cfg.max_epochs and not self._step_budget_spent():
            self.train_epoch()
            self._stop_if_diverged()
            self.epoch += 1
            self.batches_done = 0
            metrics = None
            last = self.epoch == self.cfg.max_epochs or self._step_budget_spent()
            if self.evaluator is not None and (self.epoch % self.cfg.eval_every == 0 or last):
                metrics = self.evaluate() if self.is_main else None
                distributed.barrier(self.dist)
            self.save(metrics)

    # ---------------------------------------------------------------- preemption
    def _install_signal_handlers(self) -> None:
        def record(signum, frame):  # act at the next step boundary, where the state is consistent
            self.stop_signal = signum

        for sig in STOP_SIGNALS:
            try:
                self._previous_handlers[sig] = signal.signal(sig, record)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _restore_signal_handlers(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers.clear()

    def _stop_for_signal(self) -> None:
        """Save where we are, hand over to whoever else wanted the signal (submitit requeues
        the job from its handler), and stop."""
        signum = self.stop_signal or signal.SIGTERM
        self.save(None, mid_epoch=True)
        distributed.barrier(self.dist)
        name = signal.Signals(signum).name
        log.warning(
            "%s received: saved epoch %d + %d batches (step %d) to %s",
            name,
            self.epoch,
            self.batches_done,
            self.step,
            self.ckpt_dir / ckpt.LAST,
        )
        previous = self._previous_handlers.get(signum)
        self._restore_signal_handlers()
        if callable(previous):
            previous(signum, None)
        raise Preempted(
            f"stopped by {name} at epoch {self.epoch + 1}, step {self.step}; the state is saved in "
            f"{self.ckpt_dir / ckpt.LAST}. Run the same command with hydra.run.dir={self.run_dir} to resume."
        )

    def _act_on_interruptions(self) -> None:
        """At a step boundary, every rank alike: stop without writing when the run directory was taken
        over, save and stop on a stop signal."""
        lost = self.lock is not None and self.lock.lost is not None
        interruption = distributed.max_over_ranks(2 if lost else int(self.stop_signal is not None), self.dist)
        if interruption == 2:
            if self.lock is not None:
                self.lock.check()
            raise RunDirectoryLost(f"{self.run_dir} was taken over by another training (see rank 0's message)")
        if interruption == 1:
            self._stop_for_signal()

    def _step_budget_spent(self) -> bool:
        return bool(self.cfg.max_steps) and self.step >= self.cfg.max_steps

    def train_epoch(self) -> None:
        started = time.time()
        try:
            self._train_epoch()
        finally:
            self.train_time += time.time() - started

    def _train_epoch(self) -> None:
        """One epoch: per optimizer step, ``grad_accum`` micro-batches forward and backward, then
        the step; then logging, the stop-signal check and the step budget, in that order."""
        self.model.train()
        window = WindowStats()
        bar = self._epoch_progress()
        losses: Dict[str, torch.Tensor] = {}
        for micro_batches in _accumulation_groups(enumerate(bar, start=self.batches_done), self.cfg.grad_accum):
            self.optimizer.zero_grad(set_to_none=True)
            for n, (index, batch) in enumerate(micro_batches):  # gradient accumulation
                last = n == len(micro_batches) - 1
                losses = self._forward_backward(index, batch, sync_gradients=last, window=window) or losses
            self._optimizer_step()
            self.batches_done = index + 1
            if self.step % self.cfg.log_every == 0 or self._step_budget_spent():
                self._log_window(window, losses, bar)
                window = WindowStats()
            self._act_on_interruptions()
            if self._step_budget_spent():
                break

    def _epoch_progress(self):
        """This epoch's batches (after those a mid-epoch checkpoint already trained), as a live
        bar on a terminal; in logs (CI, SLURM) the periodic log lines stand in for it."""
        self.train_loader.sampler.set_epoch(self.epoch)
        self.train_loader.sampler.skip_next(self.batches_done * self.cfg.batch_size)
        return tqdm(
            self.train_loader,
            desc=f"epoch {self.epoch + 1}/{self.cfg.max_epochs}",
            disable=True if not self.is_main else None,
            leave=False,
            dynamic_ncols=True,
        )

    def _forward_backward(self, index: int, batch, sync_gradients: bool, window: "WindowStats"):
        """One micro-batch: forward, loss, guard, scaled backward — of the labelled batch, then (with
        ``preserve``) of the anchor batch's distillation loss. Returns its losses, or None when the
        batch was skipped for a non-finite loss (its group's gradients dropped)."""
        batch = _to_device(batch, self.device)
        # DDP all-reduces gradients only at the group's last backward (with distillation: the anchors').
        labelled_syncs = sync_gradients and self.preserve is None
        loss = self._guarded_backward(index, labelled_syncs, self._labelled_loss, batch)
        if loss is None:
            return None
        losses, core = loss
        if self.preserve is not None:
            kept = self._guarded_backward(index, sync_gradients, self._preservation_loss)
            if kept is None:
                return None
            losses = {**losses, **kept[0]}
        self.bad_steps = 0
        window.add(core.detach(), images=len(batch.img_batch))
        self.images_seen += len(batch.img_batch)
        return losses

    def _labelled_loss(self, batch) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        losses = compute_loss(self.model, self.loss_fn, batch, forward=self.forward_module)
        return losses, core_loss(losses)

    def _preservation_loss(self) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        losses = self.preserve.loss(self.model, self.forward_module, lambda b: _to_device(b, self.device))
        return losses, losses["loss_distill"]

    def _guarded_backward(self, index: int, sync_gradients: bool, loss_of: Callable, *args):
        """``loss_of(*args)`` -> ``(losses, loss)``, guarded, then the scaled backward of ``loss``. Returns
        ``(losses, loss)``, or None when the batch was skipped for a non-finite loss.

        Every rank learns whether any rank's loss or predictions were non-finite, so all skip the
        batch (or stop) together: a rank that skipped alone would leave the others waiting in
        the gradients' all-reduce."""
        no_sync = contextlib.nullcontext() if sync_gradients or not self.dist.enabled else self.forward_module.no_sync()
        with no_sync:
            try:
                with self.autocast():
                    losses, loss = loss_of(*args)
                # The guard needs the value now (one sync per batch; sam3's matcher syncs anyway).
                health = FINITE if torch.isfinite(loss) else NON_FINITE_LOSS
            except NonFinitePredictions:  # valid data cannot cause this: the model itself broke
                health = NON_FINITE_PREDICTIONS
            health = distributed.max_over_ranks(health, self.dist)
            if health == NON_FINITE_PREDICTIONS:
                self._diverged("the model's predictions are NaN/inf")
            if health == NON_FINITE_LOSS:
                self._skip_non_finite_batch(index)
                return None
            self.scaler.scale(loss / self.cfg.grad_accum).backward()
        return losses, loss

    def _optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        if self.cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1

    def _skip_non_finite_batch(self, index: int) -> None:
        """A NaN/inf loss or prediction: drop the batch's gradients; stop at once if the weights
        themselves diverged, or after ``max_bad_steps`` such batches in a row."""
        self.bad_steps += 1
        self.optimizer.zero_grad(set_to_none=True)  # the group's gradients so far go with it
        self._stop_if_diverged()
        log.warning(
            "non-finite loss at epoch %d batch %d (%d in a row); batch skipped", self.epoch + 1, index, self.bad_steps
        )
        if self.bad_steps >= self.cfg.max_bad_steps:
            raise NonFiniteLossError(
                f"loss was NaN/inf for {self.bad_steps} consecutive batches at step {self.step}. The last good "
                f"checkpoint is in {self.ckpt_dir}. Try a lower optimizer.lr, trainer.clip_grad=0.1, or trainer.amp=off."
            )

    def _log_window(self, window: "WindowStats", losses: dict, bar) -> None:
        metrics = {
            "train/loss": window.mean_loss(),  # the only read of the summed loss: it syncs a GPU
            "train/lr": self.optimizer.param_groups[0]["lr"],
            "train/images_per_s": window.images / max(time.time() - window.started, 1e-9),
            "train/epoch": self.epoch + 1,
        }
        metrics.update(
            {f"train/{k}": v.detach().item() for k, v in losses.items() if k.startswith("loss_") and "aux" not in k}
        )
        metrics["train/peak_memory_gb"] = peak_memory_gb(self.device)
        bar.set_postfix(
            loss=f"{metrics['train/loss']:.2f}",
            lr=f"{metrics['train/lr']:.1e}",
            img_s=f"{metrics['train/images_per_s']:.1f}",
        )
        log.info(
            "step %d epoch %d loss %.3f lr %.2e %.1f img/s",
            self.step,
            self.epoch + 1,
            metrics["train/loss"],
            metrics["train/lr"],
            metrics["train/images_per_s"],
        )
        self.loggers.log_metrics(metrics, self.step)

    def evaluate(self) -> Dict[str, float]:
        metrics = self.evaluator(self.model, self.device, self.autocast())
        value = metrics.get(self.cfg.best_metric)
        if value is None:
            raise KeyError(
                f"trainer.best_metric '{self.cfg.best_metric}' is not computed; choose from {sorted(metrics)}"
            )
        improved = self.best is None or value > self.best
        self.pending_best = value if improved else None  # recorded by save() once the best files are written
        self.history.append({"epoch": self.epoch, "step": self.step, **metrics})
        log.info(
            "eval epoch %d: bbox AP %.4f, segm AP %.4f, segm cgF1 %.4f at score threshold %.2f (best %s %.4f)",
            self.epoch,
            metrics["bbox/AP"],
            metrics["segm/AP"],
            metrics["segm/cgF1"],
            metrics["saco/threshold"],
            self.cfg.best_metric,
            value if improved else self.best,
        )
        self.loggers.log_metrics({f"val/{k}": v for k, v in metrics.items()}, self.step)
        if self.is_main:
            (self.run_dir / layout.METRICS).write_text(json.dumps(self.history, indent=1))
        return metrics


@dataclass
class WindowStats:
    """Training statistics since the last log line. The loss is summed on the device, so
    recording a batch never waits for the GPU; it is read when logged."""

    loss_sum: torch.Tensor | float = 0.0
    batches: int = 0
    images: int = 0
    started: float = field(default_factory=time.time)

    def add(self, loss: torch.Tensor, images: int) -> None:
        self.loss_sum = self.loss_sum + loss
        self.batches += 1
        self.images += images

    def mean_loss(self) -> float:
        return float(self.loss_sum) / max(self.batches, 1)


def _accumulation_groups(batches: Iterable, size: int) -> Iterator[list]:
    """Consecutive groups of ``size`` batches, one per optimizer step; an incomplete group at
    the epoch's end is dropped (it would never reach a step; ``steps_per_epoch`` counts alike)."""
    group: list = []
    for item in batches:
        group.append(item)
        if len(group) == size:
            yield group
            group = []


def _to_device(batch, device: torch.device):
    if device.type == "cpu":
        return batch
    from sam3.model.utils.misc import copy_data_to_device

    return copy_data_to_device(batch, device, non_blocking=True)
