"""Metric logging to TensorBoard and/or wandb (either, both or neither).

Only rank 0 logs. wandb works offline without an account (``mode: offline``) and
keeps its run id in the run directory, so a resumed run continues the same wandb run.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from sam3_lora.core.atomic_files import atomic_write_text
from sam3_lora.core.schema import one_of, setting

log = logging.getLogger(__name__)


@dataclass
class TensorBoardSettings:
    subdir: str = setting("tensorboard", "event files go to <run dir>/<subdir>")


@dataclass
class WandbSettings:
    project: str = setting("sam3_lora", "the wandb project")
    entity: Optional[str] = setting(None, "the wandb team or user; null: your default")
    name: Optional[str] = setting(None, "the run's name; null: the run's overrides")
    group: Optional[str] = setting(None, "the runs' group; null: a sweep's directory")
    tags: List[str] = setting(doc="tags of the run", factory=list)
    mode: str = setting(
        "offline",
        "offline needs no account (wandb sync later); online streams; disabled logs nothing",
        one_of("offline", "online", "disabled"),
    )


@dataclass
class LoggerSettings:
    """The ``logger`` group: each backend's settings, or null to leave it out. The run adds where and
    what (``build_loggers``'s other arguments)."""

    _target_: str = "sam3_lora.training.loggers.build_loggers"
    _partial_: bool = True
    tensorboard: Optional[TensorBoardSettings] = setting(None, "TensorBoard's settings, or null")
    wandb: Optional[WandbSettings] = setting(None, "wandb's settings, or null")


class TensorBoardLogger:
    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def log_hparams(self, hparams: Dict[str, Any], metrics: Dict[str, float]) -> None:
        # Same directory as the scalars, so the HParams view lists one row per run.
        self.writer.add_hparams(_flat_scalars(hparams), metrics, run_name=".")

    def finish(self) -> None:
        self.writer.close()


class WandbLogger:
    def __init__(
        self,
        run_dir: Path,
        config: Dict[str, Any],
        project: str,
        name: Optional[str],
        group: Optional[str],
        tags: List[str],
        mode: str,
        entity: Optional[str] = None,
    ):
        import wandb

        id_file = Path(run_dir) / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        atomic_write_text(id_file, run_id)
        self.run = wandb.init(
            project=project,
            entity=entity,
            name=name,
            group=group,
            tags=list(tags),
            config=config,
            dir=str(run_dir),
            id=run_id,
            resume="allow",
            mode=mode,
        )

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_hparams(self, hparams: Dict[str, Any], metrics: Dict[str, float]) -> None:
        self.run.summary.update(metrics)

    def finish(self) -> None:
        self.run.finish()


def _flat_scalars(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """TensorBoard hparams accept only scalars and strings: flatten and stringify the rest."""
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_scalars(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


class Loggers:
    """Fans each call out to the enabled backends."""

    def __init__(self, backends: List[Any]):
        self.backends = backends

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        for b in self.backends:
            b.log_metrics(metrics, step)

    def log_hparams(self, hparams: Dict[str, Any], metrics: Dict[str, float]) -> None:
        for b in self.backends:
            b.log_hparams(hparams, metrics)

    def finish(self) -> None:
        for b in self.backends:
            b.finish()


def build_loggers(
    *,
    run_dir: Path,
    config: Dict[str, Any],
    run_name: str,
    is_main: bool,
    default_group: Optional[str] = None,
    tensorboard: Optional[Dict[str, Any]] = None,
    wandb: Optional[Dict[str, Any]] = None,
) -> Loggers:
    """The ``logger`` config group's target (partial: the run supplies where and what).

    ``tensorboard`` / ``wandb``: each backend's settings, or null to leave it out.
    ``default_group``: the wandb group when the config names none (a sweep's directory)."""
    if not is_main:
        return Loggers([])
    backends: List[Any] = []
    if tensorboard:
        backends.append(TensorBoardLogger(Path(run_dir) / tensorboard["subdir"]))
    if wandb:
        backends.append(
            WandbLogger(
                run_dir,
                config,
                project=wandb["project"],
                name=wandb.get("name") or run_name,
                group=wandb.get("group") or default_group,
                tags=list(wandb.get("tags") or []),
                mode=wandb["mode"],
                entity=wandb.get("entity"),
            )
        )
    return Loggers(backends)
