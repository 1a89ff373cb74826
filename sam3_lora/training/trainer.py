"""The training loop: SAM3's loss, AMP, accumulation, clipping, evaluation, checkpoints, resume.

``fit`` -> epochs -> per optimizer step, ``grad_accum`` micro-batches (``_forward_backward``) then
``_optimizer_step``; after each epoch ``evaluate`` then ``save``. Trains what requires a gradient in
the model it is handed (the tuning method decided). Made by ``trainer_factory.py``; its parts:
``run_state`` (position, checkpoints, resume), ``guards`` (stop signals, a lost run directory,
divergence) and ``step_log`` (progress, log lines, throughput).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from operator import attrgetter
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, Optional, Tuple

import torch
from torch import nn

from sam3_lora.core.atomic_files import remove_stale_temp_files
from sam3_lora.core.device import peak_memory_gb, resolve_amp
from sam3_lora.evaluation.heldout import Evaluator
from sam3_lora.runs.lock import RunDirectoryLock
from sam3_lora.sam3_compat.matcher import NonFinitePredictions
from sam3_lora.training import checkpoint as ckpt
from sam3_lora.training import distributed
from sam3_lora.training.config import TrainerConfig
from sam3_lora.training.distributed import DistInfo
from sam3_lora.training.guards import FINITE, NON_FINITE_LOSS, NON_FINITE_PREDICTIONS, Divergence, Interruptions
from sam3_lora.training.guards import STOP_SIGNALS, DivergedError, NonFiniteLossError, Preempted
from sam3_lora.training.keeping import KeepingTerm
from sam3_lora.training.loggers import Loggers
from sam3_lora.training.loss import batch_to_device, compute_loss, core_loss
from sam3_lora.training.run_state import RunState
from sam3_lora.training.step_log import SessionThroughput, StepLog, WindowStats, epoch_progress

__all__ = ["STOP_SIGNALS", "DivergedError", "NonFiniteLossError", "Preempted", "Trainer", "WindowStats"]

log = logging.getLogger(__name__)


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
        preserve: Optional[KeepingTerm] = None,
    ):
        self.cfg = cfg
        self.device = device
        self.amp_dtype = resolve_amp(cfg.amp, self.device)
        self.model, self.loss_fn = model, loss_fn
        trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in trainable]
        self.optimizer = make_optimizer(trainable)  # named: per-module learning rates are the optimizer group's
        self.steps_per_epoch = max(1, len(train_loader) // cfg.grad_accum)
        self.total_steps = min(cfg.max_epochs * self.steps_per_epoch, cfg.max_steps or 2**62)
        self.scheduler = make_scheduler(self.optimizer, total_steps=self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.train_loader = train_loader
        self.evaluator = evaluator
        self.loggers = loggers
        self.run_dir = Path(run_dir)
        self.resume_from = resume_from  # the checkpoint to continue, already read and checked by the caller
        self.lock = lock  # rank 0's hold on the run directory: nothing is written once it is lost
        self.preserve = preserve  # the keeping method's term, added to every micro-batch (preserve=)
        self.dist = dist_info
        self.is_main = dist_info.is_main
        self.forward_module = distributed.wrap_ddp(self.model, self.device, dist_info)
        self.session = SessionThroughput()
        self.step_log = StepLog(loggers, device)
        self.run = RunState(
            model=model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            total_steps=self.total_steps,
            run_dir=self.run_dir,
            save_weights=save_weights,
            save_every=cfg.save_every,
            run_record=run_record,
            session=self.session,
        )
        self.divergence = Divergence(
            params=self.params, optimizer=self.optimizer, run=self.run, max_bad_steps=cfg.max_bad_steps
        )
        mid_epoch_save = functools.partial(self.save, None, mid_epoch=True)
        self.interruptions = Interruptions(run=self.run, lock=lock, dist=dist_info, save=mid_epoch_save)

    # The run's position and scores, held (and checkpointed) by ``self.run``.
    epoch = property(attrgetter("run.epoch"), doc="epochs completed")
    step = property(attrgetter("run.step"), doc="optimizer steps taken")

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def save(self, metrics: Optional[Dict[str, float]], mid_epoch: bool = False) -> None:
        """Rank 0 checkpoints, never NaN weights and never into a run directory another training took over."""
        if not self.is_main:
            return
        self.divergence.stop_if_diverged()
        if self.lock is not None:
            self.lock.check()
        self.run.save(metrics, mid_epoch)

    # ---------------------------------------------------------------- loop
    def fit(self) -> Dict[str, float]:
        if self.is_main:
            remove_stale_temp_files(self.run.ckpt_dir, self.run_dir)
        self.run.resume(self.resume_from)
        self.session.begin(self.step)
        self.interruptions.install_signal_handlers()
        try:
            self._epochs()
        finally:
            self.interruptions.restore_signal_handlers()
        if not distributed.replicas_in_sync(self.params, self.dist):
            raise RuntimeError("DDP replicas diverged: trainable weights differ across ranks")
        if self.dist.enabled:
            log.info("DDP: trainable weights identical on all %d ranks", self.dist.world_size)
        return {**self.run.figures(self.dist.world_size), "peak_memory_gb": peak_memory_gb(self.device)}

    def _epochs(self) -> None:
        while self.epoch < self.cfg.max_epochs and not self._step_budget_spent():
            self.train_epoch()
            self.divergence.stop_if_diverged()
            self.run.epoch += 1
            self.run.batches_done = 0
            metrics = None
            last = self.epoch == self.cfg.max_epochs or self._step_budget_spent()
            if self.evaluator is not None and (self.epoch % self.cfg.eval_every == 0 or last):
                metrics = self.evaluate() if self.is_main else None
                distributed.barrier(self.dist)
            self.save(metrics)

    def _step_budget_spent(self) -> bool:
        return bool(self.cfg.max_steps) and self.step >= self.cfg.max_steps

    def train_epoch(self) -> None:
        with self.session.training():
            self._train_epoch()

    def _train_epoch(self) -> None:
        """One epoch: per optimizer step, ``grad_accum`` micro-batches forward and backward, then
        the step; then logging, the stop-signal check and the step budget, in that order."""
        self.model.train()
        window = WindowStats()
        batches = self.run.epoch_batches(self.train_loader)
        bar = epoch_progress(batches, len(self.train_loader), self.epoch, self.run.batches_done, self.cfg, self.is_main)
        losses: Dict[str, torch.Tensor] = {}
        for micro_batches in _accumulation_groups(enumerate(bar, start=self.run.batches_done), self.cfg.grad_accum):
            self.optimizer.zero_grad(set_to_none=True)
            for n, (index, batch) in enumerate(micro_batches):  # gradient accumulation
                last = n == len(micro_batches) - 1
                losses = self._forward_backward(index, batch, sync_gradients=last, window=window) or losses
            self._optimizer_step()
            self.run.batches_done = index + 1
            if self.step % self.cfg.log_every == 0 or self._step_budget_spent():
                lr = self.optimizer.param_groups[0]["lr"]
                self.step_log.window(window, losses, bar, lr=lr, step=self.step, epoch=self.epoch)
                window = WindowStats()
            self.interruptions.act()
            if self._step_budget_spent():
                break

    def _forward_backward(self, index: int, batch, sync_gradients: bool, window: WindowStats):
        """One micro-batch: forward, loss, guard, scaled backward — of the labelled batch, then (with
        ``preserve``) of the keeping method's term. Returns its losses, or None when the batch was
        skipped for a non-finite loss (its group's gradients dropped)."""
        batch = batch_to_device(batch, self.device)
        # DDP all-reduces gradients only at the group's last backward (with a keeping term: its).
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
        self.divergence.bad_steps = 0  # a finite micro-batch ends a run of non-finite ones
        window.add(core.detach(), images=len(batch.img_batch))
        self.session.images += len(batch.img_batch)
        return losses

    def _labelled_loss(self, batch) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        losses = compute_loss(self.model, self.loss_fn, batch, forward=self.forward_module)
        return losses, core_loss(losses)

    def _preservation_loss(self) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        losses = self.preserve.loss(self.model, self.forward_module, lambda b: batch_to_device(b, self.device))
        return losses, losses[self.preserve.term]

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
            if not self.divergence.keep_batch(health, index, self.dist):
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
        self.run.step += 1

    def evaluate(self) -> Dict[str, float]:
        metrics = self.evaluator(self.model, self.device, self.autocast())
        best = self.run.record_evaluation(metrics, self.cfg.best_metric)
        self.step_log.evaluation(metrics, epoch=self.epoch, step=self.step, best_metric=self.cfg.best_metric, best=best)
        if self.is_main:
            self.run.write_history()
        return metrics


def _accumulation_groups(batches: Iterable, size: int) -> Iterator[list]:
    """Consecutive groups of ``size`` batches, one per optimizer step; an incomplete group at
    the epoch's end is dropped (it would never reach a step; ``steps_per_epoch`` counts alike)."""
    group: list = []
    for item in batches:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
