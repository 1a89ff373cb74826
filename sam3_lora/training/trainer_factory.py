"""The one place a :class:`~sam3_lora.training.trainer.Trainer` is made, for a tuning run and for the
toy base's pretraining alike: SAM3's own loss (its box count all-reduced across ranks under DDP, so
every rank's loss is normalised alike) around the parts the caller built."""

from __future__ import annotations

from typing import Callable, Optional
from pathlib import Path

import torch
from torch import nn

from sam3_lora.evaluation.heldout import Evaluator
from sam3_lora.runs.lock import RunDirectoryLock
from sam3_lora.training import checkpoint as ckpt
from sam3_lora.training.config import TrainerConfig
from sam3_lora.training.distributed import DistInfo
from sam3_lora.training.keeping import KeepingTerm
from sam3_lora.training.loggers import Loggers
from sam3_lora.training.loss import build_sam3_loss
from sam3_lora.training.trainer import Trainer


def build_trainer(
    settings: TrainerConfig,
    model: nn.Module,
    train_loader: torch.utils.data.DataLoader,
    *,
    make_optimizer: Callable,
    make_scheduler: Callable,
    run_dir: Path,
    device: torch.device,
    evaluator: Optional[Evaluator] = None,
    loggers: Optional[Loggers] = None,
    save_weights: Callable[[nn.Module, str], None] | None = None,
    info: DistInfo = DistInfo(),
    run_record: Optional[dict] = None,
    resume_from: Optional[ckpt.Resume] = None,
    lock: Optional[RunDirectoryLock] = None,
    keeping: Optional[KeepingTerm] = None,
) -> Trainer:
    """``make_optimizer``: the optimizer group's factory, completed with the named trainable parameters;
    ``make_scheduler``: the scheduler group's, with the optimizer and the step count; ``save_weights``:
    ``(model, "best" | "last")``, the tuning method's shippable weights (None: nothing shipped);
    ``keeping``: the keeping method's term (``preserve=``), added to every micro-batch's loss."""
    loss_fn = build_sam3_loss(
        model.transformer.decoder.num_queries, with_masks=settings.mask_loss, normalization="global" if info.enabled else "local"
    )
    return Trainer(
        model=model,
        loss_fn=loss_fn,
        make_optimizer=make_optimizer,
        make_scheduler=make_scheduler,
        train_loader=train_loader,
        evaluator=evaluator,
        loggers=loggers if loggers is not None else Loggers([]),
        run_dir=Path(run_dir),
        cfg=settings,
        save_weights=save_weights or (lambda model, tag: None),
        device=device,
        dist_info=info,
        run_record=run_record,
        resume_from=resume_from,
        lock=lock,
        preserve=keeping,
    )
