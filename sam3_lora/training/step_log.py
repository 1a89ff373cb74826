"""What the training loop reports as it goes: the progress bar, the periodic step lines and
evaluation lines, and this process's throughput in this session.

The loss of a log window is summed on the device and read once per log line, so recording a
batch never waits for the GPU.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Dict, Iterator
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from sam3_lora.core.device import peak_memory_gb
from sam3_lora.training.config import TrainerConfig
from sam3_lora.training.loggers import Loggers

# The loop's own logger name: training.log shows every line of the loop under one name.
log = logging.getLogger("sam3_lora.training.trainer")


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


class SessionThroughput:
    """This process's training time and images in this session, and where the session began
    (wall clock, optimizer step): the checkpoint adds them to the earlier sessions' figures."""

    def __init__(self) -> None:
        self.images, self.train_s = 0, 0.0
        self.started, self.first_step = time.time(), 0

    def begin(self, step: int) -> None:
        self.started, self.first_step = time.time(), step

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """Counts the time inside as training time (evaluation and checkpoints stay outside)."""
        started = time.time()
        try:
            yield
        finally:
            self.train_s += time.time() - started


def epoch_progress(batches, total: int, epoch: int, batches_done: int, cfg: TrainerConfig, is_main: bool):
    """This epoch's ``batches`` (after the ``batches_done`` a mid-epoch checkpoint already trained),
    as a live bar on a terminal; in logs (CI, SLURM) the periodic log lines stand in for it."""
    return tqdm(
        batches,
        total=total,
        initial=batches_done,
        desc=f"epoch {epoch + 1}/{cfg.max_epochs}",
        disable=True if not is_main else None,
        leave=False,
        dynamic_ncols=True,
    )


class StepLog:
    """The loop's step and evaluation lines: on the progress bar, in the log and to the loggers."""

    def __init__(self, loggers: Loggers, device: torch.device):
        self.loggers, self.device = loggers, device

    def window(self, window: WindowStats, losses: Dict[str, torch.Tensor], bar, *, lr: float, step: int, epoch: int):
        """The step line of the window that ends at optimizer step ``step`` (in epoch ``epoch + 1``)."""
        metrics = {
            "train/loss": window.mean_loss(),  # the only read of the summed loss: it syncs a GPU
            "train/lr": lr,
            "train/images_per_s": window.images / max(time.time() - window.started, 1e-9),
            "train/epoch": epoch + 1,
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
            step,
            epoch + 1,
            metrics["train/loss"],
            metrics["train/lr"],
            metrics["train/images_per_s"],
        )
        self.loggers.log_metrics(metrics, step)

    def evaluation(self, metrics: Dict[str, float], *, epoch: int, step: int, best_metric: str, best: float) -> None:
        """An evaluation after ``epoch`` epochs, with the best score so far."""
        log.info(
            "eval epoch %d: bbox AP %.4f, segm AP %.4f, segm cgF1 %.4f at score threshold %.2f (best %s %.4f)",
            epoch,
            metrics["bbox/AP"],
            metrics["segm/AP"],
            metrics["segm/cgF1"],
            metrics["saco/threshold"],
            best_metric,
            best,
        )
        self.loggers.log_metrics({f"val/{k}": v for k, v in metrics.items()}, step)
