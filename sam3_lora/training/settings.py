"""Checks of a composed training config, before any model is built or data read.

A wrong value found only after the frozen base's evaluation costs minutes on the full
model, and one found after the first epoch loses that epoch. Every problem names the key,
the value given and the valid range or choices; all of them are reported at once.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, List

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sam3_lora.core.errors import UserError
from sam3_lora.data.config import DatasetConfig
from sam3_lora.evaluation.coco import STAT_NAMES
from sam3_lora.evaluation.saco import SCORE_KEYS

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
# COCOeval's stats, then the SA-Co scores (saco/IL_MCC, bbox/pmF1, bbox/cgF1, segm/pmF1, segm/cgF1).
BEST_METRICS = tuple(f"{kind}/{stat}" for kind in ("bbox", "segm") for stat in STAT_NAMES) + SCORE_KEYS


class ConfigError(UserError, ValueError):
    """Settings that cannot work, each with its key, value and what is valid."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


class _Problems:
    def __init__(self) -> None:
        self.lines: List[str] = []

    def add(self, key: str, value: Any, valid: str) -> None:
        self.lines.append(f"{key}={value!r}: {valid}")

    def int_at_least(self, cfg: DictConfig, key: str, low: int, optional: bool = False) -> None:
        value = cfg.get(key)
        if optional and value is None:
            return
        if not _is_int(value) or value < low:
            self.add(key, value, f"an integer >= {low}" + (" or null" if optional else ""))

    def number_in(self, cfg: DictConfig, key: str, low: float, high: float, what: str) -> None:
        if key in cfg and not (_is_number(cfg[key]) and low <= cfg[key] <= high):
            self.add(key, cfg[key], what)

    def choice(self, cfg: DictConfig, key: str, choices: Iterable[str]) -> None:
        if cfg.get(key) not in choices:
            self.add(key, cfg.get(key), f"one of {', '.join(choices)}")


def _check_trainer(t: DictConfig, p: _Problems) -> None:
    for key in ("max_epochs", "batch_size", "grad_accum", "eval_every", "log_every", "max_dets", "max_bad_steps"):
        p.int_at_least(t, key, 1)
    p.int_at_least(t, "max_steps", 1, optional=True)
    p.int_at_least(t, "num_workers", 0)
    p.int_at_least(t, "save_every", 0)
    if t.get("clip_grad") is not None and not (_is_number(t.clip_grad) and t.clip_grad > 0):
        p.add("clip_grad", t.clip_grad, "a positive max gradient norm (upstream: 0.1) or null to disable")
    p.choice(t, "amp", AMP_CHOICES)
    p.choice(t, "best_metric", BEST_METRICS)
    if t.get("base_dtype") not in (None, "bf16"):
        p.add("base_dtype", t.get("base_dtype"), "null (fp32) or bf16")
    elif t.get("base_dtype") == "bf16" and t.get("amp") in ("off", "fp16"):
        p.add("base_dtype", "bf16", "bf16 needs trainer.amp=bf16 or auto (bf16 on CUDA)")
    for key in ("activation_checkpointing", "text_cache", "compile", "auto_resume", "deterministic"):
        if not isinstance(t.get(key), bool):
            p.add(key, t.get(key), "true or false")
    try:
        device = torch.device(t.device) if t.device != "auto" else None
    except (RuntimeError, TypeError):
        p.add("device", t.device, "auto, cpu, cuda or cuda:N")
    else:
        if device is not None and device.type == "cuda" and not torch.cuda.is_available():
            p.add("device", t.device, "no CUDA GPU is visible to torch here; use trainer.device=auto or cpu")
        elif device is not None and device.type not in ("cpu", "cuda"):
            p.add("device", t.device, "auto, cpu, cuda or cuda:N")


def _check_optimizer(o: DictConfig, p: _Problems) -> None:
    if not (_is_number(o.get("lr")) and o.lr > 0):
        p.add("lr", o.get("lr"), "a positive learning rate (LoRA: about 1e-4 to 3e-3)")
    p.number_in(o, "weight_decay", 0, math.inf, "a number >= 0")
    p.number_in(o, "momentum", 0, 1, "a number in [0, 1]")
    if "betas" in o and not (len(o.betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in o.betas)):
        p.add("betas", list(o.betas), "two numbers in [0, 1), e.g. [0.9, 0.999]")


def _check_scheduler(s: DictConfig, p: _Problems) -> None:
    p.int_at_least(s, "warmup_steps", 0)
    p.number_in(s, "warmup_ratio", 0, 1, "a fraction of the training steps in [0, 1]")
    p.number_in(s, "min_lr_ratio", 0, 1, "a fraction of the peak lr in [0, 1]")
    p.number_in(s, "gamma", 0, math.inf, "a positive factor")
    if "milestones" in s and not all(_is_number(m) and 0 < m < 1 for m in s.milestones):
        p.add("milestones", list(s.milestones), "fractions of training in (0, 1), e.g. [0.66, 0.9]")


def _check_group(cfg: DictConfig, group: str, check, problems: List[str]) -> None:
    p = _Problems()
    if cfg.get(group) is not None:
        check(cfg[group], p)
    problems.extend(f"{group}.{line}" for line in p.lines)


def _check_dataset(dataset: DictConfig, problems: List[str], key: str = "dataset") -> None:
    """The section (``dataset`` or ``retention``) must build a DatasetConfig: every key known, none missing."""
    try:
        built = instantiate(dataset)
    except Exception as e:  # noqa: BLE001 - Hydra wraps what the target raised
        cause = e.__cause__ or e
        message = str(cause) if isinstance(cause, UserError) else f"dataset: {cause}"
        problems.append(message if key == "dataset" else f"{key} (a dataset section): {message}")
        return
    if not isinstance(built, DatasetConfig):
        problems.append(
            f"{key}._target_={dataset.get('_target_')!r} built a {type(built).__name__}, not a "
            "sam3_lora.data.config.DatasetConfig (see conf/dataset/coco.yaml)"
        )


def check_train_config(cfg: DictConfig) -> None:
    """Raise a :class:`ConfigError` listing every invalid setting of a training config."""
    problems: List[str] = []
    try:  # every ${...} must resolve: the run records (and compares on resume) the resolved config
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"{key}: cannot be resolved ({str(e).splitlines()[0]}); set {key}= explicitly") from e
    for key in sorted(OmegaConf.missing_keys(cfg)):  # ??? in a config: a value only the user can give
        problems.append(f"{key} is required: set {key}=... on the command line")
    _check_group(cfg, "trainer", _check_trainer, problems)
    _check_group(cfg, "optimizer", _check_optimizer, problems)
    _check_group(cfg, "scheduler", _check_scheduler, problems)
    if cfg.get("final_eval") is not None and cfg.final_eval.get("split") not in ("train", "valid", "test"):
        problems.append(f"final_eval.split={cfg.final_eval.get('split')!r}: one of train, valid, test")
    if not _is_int(cfg.get("seed")):
        problems.append(f"seed={cfg.get('seed')!r}: an integer")
    if cfg.get("lora"):
        try:  # LoraConfig checks rank, alpha, dropout, targets, parts and the regex itself
            instantiate(cfg.lora, _convert_="all")
        except Exception as e:  # noqa: BLE001 - Hydra wraps the LoraConfigError
            cause = e.__cause__ or e
            problems.append(str(cause) if isinstance(cause, UserError) else f"lora: {cause}")
    if cfg.get("dataset") is not None:
        _check_dataset(cfg.dataset, problems)
    if cfg.get("retention") is not None:
        if cfg.retention.get("root") is None:
            problems.append("retention.root is required: retention.root=/path/to/a/coco/export (Roboflow layout)")
        else:
            _check_dataset(cfg.retention, problems, key="retention")
    if problems:
        raise ConfigError("invalid settings (nothing was built or read yet):\n- " + "\n- ".join(problems))
