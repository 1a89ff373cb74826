"""Load a tuned model for use: from a training run directory, or a base model plus an adapter.

``run_dir`` brings the run's own model, dataset and tuning method (``.hydra/config.yaml``) and
its best weights (an adapter, or a full fine-tuning's weights: the method says which); without it,
the ``model`` / ``dataset`` config and ``adapter`` path given on the command line are used. ``base=true`` leaves the adapter out (the frozen base);
``merge=true`` folds the adapter into the weights (outputs equal up to rounding, no per-layer
LoRA cost). The model is frozen and its text encoder cached: it is for use, not training.

A run directory is a file anyone could have edited or sent: its model config is built only
when every ``_target_`` in it is one of this package's model builders (those of the ``model``
config group), checked after interpolation, before anything is built; its tuning method is one
this package registers (``sam3_lora.tuning.records``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, List, Optional, Set, Tuple

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from sam3_lora.core.documents import read_config
from sam3_lora.core.errors import UserError
from sam3_lora.data.config import DatasetConfig, DatasetConfigError
from sam3_lora.lora import AdapterInfo, merge_lora, set_adapter_scale
from sam3_lora.pipeline.settings import model_builders
from sam3_lora.runs import layout
from sam3_lora.runs.lock import read_owner
from sam3_lora.speed.text_cache import install_text_cache
from sam3_lora.training.config import TrainerConfig
from sam3_lora.tuning import LoraTuning, TuningMethod, TuningRecordError, method_of_run_config

log = logging.getLogger(__name__)


class RunDirError(UserError, ValueError):
    """A run directory without what a finished training run leaves behind."""


RUN_CONFIG_FIX = (
    "Restore it from the training run (Hydra writes it at launch), or pass model= and adapter= instead of run_dir="
)
# A training split's annotation file, as far as concept routing reads it.

@dataclass
class Tuned:
    model: nn.Module
    model_cfg: DictConfig
    dataset: Optional[DatasetConfig]
    adapter: Optional[Path]  # the tuned weights' file (an adapter, or full weights); None: the base
    info: Optional[AdapterInfo]
    notes: List[str] = field(default_factory=list)  # what the figures made with it rest on
    adapter_scale: Optional[float] = None  # the adapter's weight (None: no adapter)
    tuning: Optional[TuningMethod] = None  # how the weights were tuned (None: the frozen base)

    def describe(self) -> str:
        what = f"model={self.model_cfg.get('name')}"
        if not self.adapter:
            return f"{what} (frozen base, no adapter)"
        if self.info is None:
            return f"{what} with {self.tuning.weights_kind} {self.adapter}"
        scale = "" if self.adapter_scale == 1 else f" at scale {self.adapter_scale:g}"
        return f"{what} + adapter {self.adapter}{scale}"

    def tuned_concepts(self) -> Set[str]:
        """The concepts the adapter was trained on: its training split's category names and the negative
        prompts it was trained to stay silent on (``dataset.negative_prompts``)."""
        split = self.dataset.train if self.dataset is not None else None
        if split is None or not split.exists():
            raise RunDirError(
                "concept routing needs the tuned model's training categories: its dataset's train split "
                f"({split.ann_file if split is not None else 'none recorded'}) is not there"
            )
        names = split.category_names("Restore the run's training data.", RunDirError)
        return set(names) | set(self.dataset.negative_prompt_names())


def run_config_path(run_dir) -> Path:
    return layout.hydra_config(run_dir)


def run_config(run_dir) -> DictConfig:
    """A run directory's recorded config, as data: nothing in it is built here."""
    path = run_config_path(run_dir)
    if not path.is_file():
        raise RunDirError(f"{run_dir} is not a training run directory (no {path.relative_to(run_dir)})")
    cfg = read_config(path, "run config", RUN_CONFIG_FIX, RunDirError)
    if not isinstance(cfg.get("model"), DictConfig):
        raise RunDirError(f"{path} has no 'model' section; it was not written by sam3_lora.train")
    return cfg


def _targets(node: Any, key: str) -> Iterator[Tuple[str, Any]]:
    """Every ``(key path, _target_ value)`` in a plain config tree, however deep."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "_target_":
                yield f"{key}._target_", v
            else:
                yield from _targets(v, f"{key}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _targets(v, f"{key}[{i}]")


def run_model_config(run_dir) -> Tuple[DictConfig, DictConfig]:
    """The run's config, and its model config resolved and checked: every ``_target_`` in it
    (nested ones included) is one of this package's model builders, or nothing is built."""
    rc, path = run_config(run_dir), run_config_path(run_dir)
    try:  # resolve first, so an interpolated _target_ is checked as it would be called
        model = OmegaConf.to_container(rc.model, resolve=True)
    except OmegaConfBaseException as e:
        raise RunDirError(f"{path}: the model section does not resolve ({e})") from e
    allowed = model_builders()
    targets = list(_targets(model, "model"))
    if not any(key == "model._target_" for key, _ in targets):
        raise RunDirError(f"{path}: model has no _target_; it was not written by sam3_lora.train")
    for key, target in targets:
        if not isinstance(target, str) or target not in allowed:
            raise RunDirError(
                f"{path}: refused {key}={target!r}, not one of this package's model builders "
                f"(allowed: {', '.join(sorted(allowed))}); nothing was built. A run directory written by "
                "sam3_lora.train names one of these: restore its .hydra/config.yaml, or pass model=<option> and "
                "adapter=<file> instead of run_dir="
            )
    return rc, OmegaConf.create(model)


def run_tuning(run_dir, rc: DictConfig) -> TuningMethod:
    """The tuning method a run directory's config records (only one this package registers)."""
    where = str(run_config_path(run_dir))
    try:
        return method_of_run_config(rc, where)
    except OmegaConfBaseException as e:
        raise RunDirError(f"{where}: the lora section does not resolve ({e})") from e
    except TuningRecordError as e:
        raise RunDirError(str(e)) from None


def run_weights(run_dir, tuning: TuningMethod) -> Path:
    """The run's best shipped weights (its last, when no validation chose a best)."""
    for tag in ("best", "last"):
        if (Path(run_dir) / tuning.weights_file(tag)).is_file():
            return Path(run_dir) / tuning.weights_file(tag)
    raise RunDirError(
        f"{run_dir} holds no {tuning.weights_file('best')} or {tuning.weights_file('last')} (the {tuning.name} run's "
        "weights): did it finish an epoch? Train on, or pass model= and adapter= instead of run_dir="
    )


def load_tuned(cfg: DictConfig, dataset_given: bool = False) -> Tuned:
    """``cfg`` has ``run_dir``, ``adapter``, ``base``, ``adapter_scale``, ``merge`` and (without run_dir)
    ``model`` / ``dataset``.

    ``dataset_given``: the command line set ``dataset`` (another dataset to score a run on, say
    its source domain); it replaces the run's recorded one. ``adapter_scale``: the adapter's weight
    (0: the base, 1: as trained); a merged model is merged at that scale.
    """
    scale = adapter_scale_of(cfg)
    if cfg.get("run_dir"):
        model_cfg, dataset, adapter, tuning, notes = _from_run_dir(cfg, dataset_given)
    else:
        model_cfg, notes = cfg.model, []
        dataset = instantiate(cfg.dataset) if cfg.get("dataset") is not None else None
        adapter = None if cfg.get("base") or not cfg.get("adapter") else Path(cfg.adapter)
        tuning = LoraTuning() if adapter else None  # an adapter file: LoRA's (its own config replaces this)
    model = instantiate(model_cfg)
    if not isinstance(model, nn.Module):
        raise RunDirError(f"model config {model_cfg.get('name')!r} built a {type(model).__name__}, not a model")
    info = tuning.load(model, adapter, bool(cfg.get("allow_base_mismatch"))) if adapter else None
    if info is not None:
        tuning = LoraTuning(info.config)  # what the adapter file itself says it is
    if scale != 1 and adapter and not tuning.scalable:
        raise RunDirError(f"adapter_scale={scale:g}: {tuning.name} leaves no base inside to scale towards; use 1")
    set_adapter_scale(model, scale)
    if info is not None and cfg.get("merge"):
        merge_lora(model)  # the updates folded into the weights: inference at the base model's cost
    # For use, not training: no weight changes, so each prompt is encoded once.
    model.requires_grad_(False)
    install_text_cache(model)
    return Tuned(model.eval(), model_cfg, dataset, adapter, info, notes, scale if info is not None else None, tuning)


def adapter_scale_of(cfg: DictConfig) -> float:
    """``adapter_scale=``: a finite number >= 0 (0: the base model, 1: the adapter as trained)."""
    value = cfg.get("adapter_scale", 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise RunDirError(f"adapter_scale={value!r}: a number >= 0 (0: the base model, 1: the adapter as trained)")
    return float(value)


def _from_run_dir(cfg: DictConfig, dataset_given: bool):
    """A run directory's model config (checked), dataset (its own, or the one given), adapter, notes."""
    notes = _still_training(Path(cfg.run_dir))
    rc, model_cfg = run_model_config(cfg.run_dir)
    recorded = rc.get("dataset")
    where = f"{run_config_path(cfg.run_dir)} (dataset)"
    if dataset_given:
        dataset = instantiate(cfg.dataset)
    else:
        dataset = None if recorded is None else recorded_dataset(recorded, where)
    tuning = None if cfg.get("base") else run_tuning(cfg.run_dir, rc)
    if cfg.get("adapter") and tuning is not None and not tuning.scalable:
        raise RunDirError(f"adapter={cfg.adapter}: {run_config_path(cfg.run_dir)} records {tuning.name}, which ships no adapter")
    adapter = None if tuning is None else Path(cfg.adapter or run_weights(cfg.run_dir, tuning))
    seed = rc.get("seed", 0)
    if not isinstance(seed, int):
        raise RunDirError(f"{run_config_path(cfg.run_dir)}: seed={seed!r} is not an integer")
    # Training built the model first thing after seeding: a randomly initialised base
    # (model=sam3_tiny) comes out identical here. Checkpointed bases do not depend on it.
    torch.manual_seed(seed)
    return model_cfg, dataset, adapter, tuning, notes


def _still_training(run_dir: Path) -> List[str]:
    """A run directory another process is training in: say so; its files are read as they last
    were completed (every weight file is written whole, then renamed into place)."""
    owner = read_owner(run_dir)
    if owner is None or owner.gone(TrainerConfig().stale_lock_s) is not None:
        return []
    note = (
        f"{run_dir} is being trained right now ({owner.describe()}): this uses its last complete files, which the "
        "training may still replace"
    )
    log.warning("%s", note)
    return [note]


def recorded_dataset(section: DictConfig, where: str) -> DatasetConfig:
    """A run's dataset section, read as data: built field by field, its ``_target_`` never imported."""
    try:
        values = OmegaConf.to_container(section, resolve=True)
    except OmegaConfBaseException as e:
        raise RunDirError(f"{where}: cannot be resolved ({str(e).splitlines()[0]})") from e
    try:
        return DatasetConfig.from_section(values, where)
    except DatasetConfigError as e:
        raise RunDirError(str(e)) from None


def output_dir(path, overwrite: bool) -> Path:
    """A folder to write into that holds nothing of an earlier run (unless asked to overwrite)."""
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise RunDirError(f"{path} already holds files; choose another output or set overwrite=true")
    path.mkdir(parents=True, exist_ok=True)
    return path
