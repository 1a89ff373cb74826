"""What stops a training run, and how: stop signals (save, then stop), a run directory taken over
by another training (stop without writing), and divergence (skip a non-finite batch, stop when
they keep coming or the weights themselves turn NaN/inf).

Every rank decides alike, at the same point: a rank that stopped or skipped alone would leave
the others waiting in the next collective.
"""

from __future__ import annotations

import logging
import signal
from typing import Callable, Dict, List, Optional

import torch

from sam3_lora.core.errors import UserError
from sam3_lora.core.stop_signals import STOP_SIGNALS
from sam3_lora.runs.lock import RunDirectoryLock, RunDirectoryLost
from sam3_lora.training import distributed
from sam3_lora.training.distributed import DistInfo
from sam3_lora.training.run_state import RunState

# The loop's own logger name: training.log shows every line of the loop under one name.
log = logging.getLogger("sam3_lora.training.trainer")


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



class Divergence:
    """Non-finite losses, predictions and weights. A batch with a NaN/inf loss is skipped; training
    stops after ``max_bad_steps`` of them in a row, or at once when the model itself broke."""

    def __init__(
        self, *, params: List[torch.Tensor], optimizer: torch.optim.Optimizer, run: RunState, max_bad_steps: int
    ):
        self.params, self.optimizer, self.run = params, optimizer, run
        self.max_bad_steps = max_bad_steps
        self.bad_steps = 0  # consecutive non-finite losses, across epoch boundaries

    def weights_finite(self) -> bool:
        return not self.params or bool(torch.stack([torch.isfinite(p).all() for p in self.params]).all())

    def stop_if_diverged(self) -> None:
        """Checked where a non-finite loss appears and before anything is evaluated or saved,
        so NaN weights are never written over the last good checkpoint."""
        if not self.weights_finite():
            self.diverged("the trainable weights hold NaN/inf")

    def diverged(self, what: str) -> None:
        run, saved = self.run, self.run.last_checkpoint
        raise DivergedError(
            f"training diverged at step {run.step} (epoch {run.epoch + 1}): {what}. Likely cause: the learning "
            f"rate is too high (optimizer.lr={self.optimizer.defaults.get('lr')!r}; LoRA usually trains at 1e-4 to "
            f"3e-3), trainer.clip_grad is off, or fp16 overflows (trainer.amp=bf16). Nothing was saved after this "
            + (f"point: {saved} holds the last saved state." if saved.is_file() else "point; nothing was saved before.")
            + " Start a new run with a lower optimizer.lr."
        )

    def keep_batch(self, health: int, index: int, dist: DistInfo) -> bool:
        """Whether every rank's micro-batch was finite (``health`` is this rank's): the worst over
        the ranks decides for all, so all skip the batch (or stop) together."""
        health = distributed.max_over_ranks(health, dist)
        if health == NON_FINITE_PREDICTIONS:
            self.diverged("the model's predictions are NaN/inf")
        if health == NON_FINITE_LOSS:
            self._skip_non_finite_batch(index)
            return False
        return True

    def _skip_non_finite_batch(self, index: int) -> None:
        """A NaN/inf loss or prediction: drop the batch's gradients; stop at once if the weights
        themselves diverged, or after ``max_bad_steps`` such batches in a row."""
        self.bad_steps += 1
        self.optimizer.zero_grad(set_to_none=True)  # the group's gradients so far go with it
        self.stop_if_diverged()
        log.warning(
            "non-finite loss at epoch %d batch %d (%d in a row); batch skipped",
            self.run.epoch + 1,
            index,
            self.bad_steps,
        )
        if self.bad_steps >= self.max_bad_steps:
            raise NonFiniteLossError(
                f"loss was NaN/inf for {self.bad_steps} consecutive batches at step {self.run.step}. The last good "
                f"checkpoint is in {self.run.ckpt_dir}. Try a lower optimizer.lr, trainer.clip_grad=0.1, or "
                f"trainer.amp=off."
            )


class Interruptions:
    """Stop signals and the run directory's lock, acted on at step boundaries, where the state is
    consistent: a stop signal saves the state (``save()``: a mid-epoch checkpoint) and stops; a lost
    run directory stops without writing."""

    def __init__(self, *, run: RunState, lock: Optional[RunDirectoryLock], dist: DistInfo, save: Callable[[], None]):
        self.run, self.lock, self.dist, self.save = run, lock, dist, save
        self.received: Optional[int] = None  # the stop signal that arrived, if any
        self._previous_handlers: Dict[int, object] = {}

    def install_signal_handlers(self) -> None:
        def record(signum, frame):  # act at the next step boundary, where the state is consistent
            if signum == signal.SIGINT and self.received == signal.SIGINT:
                raise KeyboardInterrupt  # Ctrl-C twice: stop now, without saving this step
            if signum == signal.SIGINT:
                log.warning("Ctrl-C: saving at the end of this step, then stopping (Ctrl-C again: stop at once)")
            self.received = signum

        for sig in STOP_SIGNALS:
            try:
                self._previous_handlers[sig] = signal.signal(sig, record)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def restore_signal_handlers(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers.clear()

    def act(self) -> None:
        """At a step boundary, every rank alike: stop without writing when the run directory was taken
        over, save (a mid-epoch checkpoint) and stop on a stop signal."""
        lost = self.lock is not None and self.lock.lost is not None
        interruption = distributed.max_over_ranks(2 if lost else int(self.received is not None), self.dist)
        if interruption == 2:
            if self.lock is not None:
                self.lock.check()
            raise RunDirectoryLost(f"{self.run.run_dir} was taken over by another training (see rank 0's message)")
        if interruption == 1:
            self._stop_for_signal()

    def _stop_for_signal(self) -> None:
        """Save where we are, hand over to whoever else wanted the signal (submitit requeues
        the job from its handler), and stop."""
        signum = self.received or signal.SIGTERM
        self.save()
        distributed.barrier(self.dist)
        name = signal.Signals(signum).name
        run = self.run
        log.warning(
            "%s received: saved epoch %d + %d batches (step %d) to %s",
            name,
            run.epoch,
            run.batches_done,
            run.step,
            run.last_checkpoint,
        )
        previous = self._previous_handlers.get(signum)
        self.restore_signal_handlers()
        if callable(previous) and previous is not signal.default_int_handler:  # that one only raises KeyboardInterrupt
            previous(signum, None)
        raise Preempted(
            f"stopped by {name} at epoch {run.epoch + 1}, step {run.step}; the state is saved in "
            f"{run.last_checkpoint}. Run the same command with hydra.run.dir={run.run_dir} to resume."
        )
