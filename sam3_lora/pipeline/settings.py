"""A run's settings: each config group's schema registered with Hydra, the composed config checked once
(every problem at once, nothing built, no data read), and the checks that span groups.

``train`` and ``check`` both call :func:`check_settings`, so they refuse exactly the same settings.
The schemas live beside the code they configure (``TrainerConfig``, ``LoraConfig``, ``DatasetConfig``,
the optimizer, scheduler, logger and model settings); each ``conf/<group>/*.yaml`` names its schema in
its defaults list (``- /<name>_schema@_here_``) and holds a preset's values only.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sam3_lora.benchmarks.run import BenchmarkRun
from sam3_lora.core.conf import CONF_DIR
from sam3_lora.core.device import resolve_amp, resolve_device
from sam3_lora.core.errors import UserError
from sam3_lora.core.schema import Valid, one_of, problems, run_name_exclusions, setting, with_target
from sam3_lora.data.config import DatasetConfig
from sam3_lora.data.prompt_lists import PromptListError, read_prompt_list
from sam3_lora.lora import LoraConfig
from sam3_lora.models.config import ModelSettings
from sam3_lora.pipeline.toy_base import ToyBaseSettings
from sam3_lora.pipeline.use_settings import USE_SCHEMAS, USE_SECTIONS
from sam3_lora.training.config import TrainerConfig
from sam3_lora.training.distill import DistillConfig
from sam3_lora.training.keeping import KeepingMethod
from sam3_lora.training.loggers import LoggerSettings
from sam3_lora.training.optim import (
    AdamWSettings,
    ConstantSettings,
    InverseSqrtSettings,
    SGDSettings,
    StepSettings,
    WarmupCosineSettings,
)
from sam3_lora.tuning import LoraTuning, TuningMethod


class ConfigError(UserError, ValueError):
    """Settings that cannot work, each with its key, value and what is valid."""


@dataclass
class FinalEval:
    split: str = setting(
        "test",
        "the split the best model is scored on after training (valid when it is absent)",
        one_of("train", "valid", "test"),
    )
    compare_base: bool = setting(True, "score the frozen base on it too, before training")
    checkpoint: str = setting(
        "best",
        "the model scored: best (the best validation's, by trainer.best_metric) or last (the final step's, as "
        "Meta's benchmark configs score)",
        one_of("best", "last"),
    )
    adapter_scales: List[float] = setting(
        doc="LoRA with a retention dataset: also score the best model with its adapter scaled to each of these "
        "(and 0, the base; 1, as trained) on both held-out splits: the trade-off curve of sam3_lora.tradeoff, "
        "in results.json's adapter_scales",
        valid=Valid(lambda v: all(0 <= x <= 1 for x in v), "scales in [0, 1]"),
        factory=list,
    )


@dataclass
class TrainSchema:
    """``conf/train.yaml``'s own settings; each group is typed by its option's schema."""

    seed: int = setting(0, "seeds python, numpy and torch before anything is drawn")
    data_seed: int = setting(
        "${seed}",
        "draws the training images when dataset.train_images is set (sam3_lora/data/train_subset.py): by default "
        "the seed, so each seed trains on its own draw; a number fixes the draw across seeds",
    )
    final_eval: FinalEval = setting(doc="scoring after training", factory=FinalEval)
    selection: Any = setting(
        None,
        "the choices a sweep makes, as rules over valid-split figures that its report applies "
        "(sam3_lora/runs/selection.py; an experiment declares them, e.g. experiment=distill_weight)",
        names_run=False,
    )
    model: Any = setting(None, "the model group")
    lora: Any = setting(None, "the lora group: the tuning method (sam3_lora/tuning/; lora=none: full fine-tuning)")
    dataset: Any = setting(None, "the dataset group")
    retention: Any = setting(None, "the retention group: a second dataset scored before and after tuning")
    preserve: Any = setting(None, "the preserve group: the keeping method, e.g. distillation from the frozen base (none: off)")
    optimizer: Any = setting(None, "the optimizer group")
    scheduler: Any = setting(None, "the scheduler group")
    trainer: Any = setting(None, "the trainer group")
    logger: Any = setting(None, "the logger group")
    benchmark: Any = setting(
        None,
        "a benchmark run: the prepared dataset it trains on (sam3_lora/benchmarks/run.py; the benchmark experiments "
        "set it, e.g. experiment=odinw13_10shot)",
    )


# The config store's nodes, by the names the YAML defaults lists use.
SCHEMAS = {
    "train_schema": TrainSchema,
    "model_schema": ModelSettings,
    "toy_base_model_schema": ToyBaseSettings,
    "lora_schema": with_target(LoraConfig, LoraTuning),
    "dataset_schema": with_target(DatasetConfig),
    "distill_schema": with_target(DistillConfig),
    "trainer_schema": with_target(TrainerConfig),
    "adamw_schema": AdamWSettings,
    "sgd_schema": SGDSettings,
    "warmup_cosine_schema": WarmupCosineSettings,
    "constant_schema": ConstantSettings,
    "step_schema": StepSettings,
    "inverse_sqrt_schema": InverseSqrtSettings,
    "logger_schema": LoggerSettings,
    **USE_SCHEMAS,
}
MODEL_SCHEMAS = (ModelSettings, ToyBaseSettings)
# The sections checked against their schema, in the order problems are listed.
CHECKED = (
    "trainer",
    "optimizer",
    "scheduler",
    "lora",
    "dataset",
    "retention",
    "preserve",
    "model",
    "logger",
)
# The sections whose typed objects a run is built from (checked by type after instantiate).
BUILT = {
    "lora": TuningMethod,
    "trainer": TrainerConfig,
    "dataset": DatasetConfig,
    "retention": DatasetConfig,
    "preserve": KeepingMethod,
}
REQUIRED_GROUPS = ("lora",)  # lora=none is an option of its own: full fine-tuning
# Groups that never name a sweep point's directory: how and where it ran, not what it trained.
UNNAMED_GROUPS = ("experiment", "launcher", "logger")


def register() -> None:
    """Put the schemas in Hydra's config store (idempotent), and the resolver of run names."""
    store = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        store.store(name=name, node=node)
    if not OmegaConf.has_resolver("sam3_lora.keys_not_in_run_names"):
        OmegaConf.register_new_resolver("sam3_lora.keys_not_in_run_names", keys_not_in_run_names)


def keys_not_in_run_names() -> List[str]:
    """``hydra.job.config.override_dirname.exclude_keys``: paths and machine settings (fields declared
    ``names_run=False``) and how a run was launched; a sweep point is named by what it trains."""
    keys = list(UNNAMED_GROUPS)
    for group, schemas in (
        ("trainer", (TrainerConfig,)),
        ("dataset", (DatasetConfig,)),
        ("retention", (DatasetConfig,)),
        ("preserve", (DistillConfig,)),
        ("model", MODEL_SCHEMAS),
        ("benchmark", (BenchmarkRun,)),
    ):
        for schema in schemas:
            keys += run_name_exclusions(schema, group)
    return list(dict.fromkeys(keys))


def model_builders() -> frozenset:
    """The ``_target_``s of the ``model`` group: all a run directory's config may build."""
    return frozenset(f.default for schema in MODEL_SCHEMAS for f in dataclasses.fields(schema) if f.name == "_target_")


def compose(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The config ``python -m sam3_lora.<name> <overrides>`` runs with (without ``hydra:``); a setting
    Hydra refuses while composing (a wrong type, a removed key) is a :class:`ConfigError`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    register()
    refuse_null_groups(overrides)
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return hydra_compose(config_name=name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"invalid settings (nothing was built or read yet):\n- {_one_line(e)}") from e


def refuse_null_groups(overrides: Sequence[str]) -> None:
    """``retention=null``: Hydra takes a config group's option by name only (and answers null with a
    traceback); say how a group is switched off instead."""
    groups = {p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()}
    for override in overrides:
        key, _, value = override.partition("=")
        if key in groups and value.strip() == "null":
            has_none = (Path(CONF_DIR) / key / "none.yaml").is_file()
            how = f"{key}=none (or ~{key})" if has_none else f"~{key}, or leave {key} out"
            raise ConfigError(
                f"{override}: a config group takes the name of one of its options ({', '.join(_options(key))}), "
                f"not null; switch {key} off with {how}"
            )


def _options(group: str) -> List[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def run_command(task: Callable[[], Any]) -> None:
    """A command's entry: ``task`` (its ``@hydra.main`` function), after the checks Hydra's own
    parsing would answer with a traceback."""
    try:
        refuse_null_groups(sys.argv[1:])
    except ConfigError as e:
        logging.getLogger("sam3_lora").error("%s", e)
        sys.exit(2)
    task()


def _one_line(e: Optional[BaseException]) -> str:
    """Hydra's and OmegaConf's composition errors (a message, its causes, the key) on one line."""
    lines, key = [], None
    while e is not None:
        for line in (line.strip() for line in str(e).splitlines()):
            if line.startswith("full_key:"):
                key = line.split(":", 1)[1].strip()
            elif line and not line.startswith("object_type="):
                lines.append(line)
        e = e.__cause__
    text = " ".join(dict.fromkeys(lines))
    return f"{text} (key {key})" if key else text


@dataclass
class RunSettings:
    """A training run's settings, checked and typed. ``config``: as composed (what the run records,
    and the sections of the groups that build objects: model, optimizer, scheduler, logger)."""

    config: DictConfig
    seed: int
    data_seed: int
    trainer: TrainerConfig
    dataset: DatasetConfig
    retention: Optional[DatasetConfig]
    preserve: Optional[KeepingMethod]
    tuning: TuningMethod
    final_eval: FinalEval
    benchmark: Optional[BenchmarkRun] = None

    @property
    def model_name(self) -> str:
        return self.config.model.name


def check_settings(cfg: DictConfig) -> RunSettings:
    """Every setting of a composed training config checked, then the typed settings; a
    :class:`ConfigError` lists every problem at once."""
    values = _resolved(cfg)
    found = problems(TrainSchema, values, "")  # seed, final_eval, and keys no group declares
    found += [line for key in CHECKED for line in _section_problems(cfg, values, key)]
    if values.get("benchmark") is not None:
        found += problems(BenchmarkRun, values["benchmark"], "benchmark")
    found += [] if found else _relation_problems(values)
    built = {}
    if not found:
        for key, kind in BUILT.items():
            built[key] = _build(cfg.get(key), key, kind, found)
    if found:
        raise ConfigError("invalid settings (nothing was built or read yet):\n- " + "\n- ".join(found))
    return RunSettings(
        config=cfg,
        seed=cfg.seed,
        data_seed=cfg.data_seed,
        trainer=built["trainer"],
        dataset=built["dataset"],
        retention=built["retention"],
        preserve=built["preserve"],
        tuning=built["lora"],
        final_eval=FinalEval(**values["final_eval"]),
        benchmark=BenchmarkRun(**values["benchmark"]) if values.get("benchmark") is not None else None,
    )


def check_use_settings(cfg: DictConfig) -> None:
    """Every setting of a composed use command's config (``evaluate``, ``predict``, ``export``,
    ``tradeoff``) checked against its schema before anything is loaded; a :class:`ConfigError`
    lists every problem at once."""
    values = _resolved(cfg)
    schema = OmegaConf.get_type(cfg)
    if not dataclasses.is_dataclass(schema):
        raise TypeError(f"{schema}: the command's YAML names no schema (its defaults start with `- <command>_schema`)")
    found = problems(schema, values, "")
    found += [line for key in USE_SECTIONS if key in values for line in _section_problems(cfg, values, key)]
    if found:
        raise ConfigError("invalid settings (nothing was loaded or written):\n- " + "\n- ".join(found))


def _resolved(cfg: DictConfig) -> dict:
    """The config as plain values, after every ``???`` was given and every ``${...}`` resolved."""
    missing = _missing_keys(cfg)
    if missing:  # ??? in a config: a value only the user can give
        raise ConfigError(
            "invalid settings (nothing was built or read yet):\n- "
            + "\n- ".join(f"{key} is required: set {key}=... on the command line" for key in missing)
        )
    try:  # every ${...} must resolve: the run records (and compares on resume) the resolved config
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"{key}: cannot be resolved ({str(e).splitlines()[0]}); set {key}= explicitly") from e


def _missing_keys(node: DictConfig, prefix: str = "") -> List[str]:
    """The keys whose value is ``???`` (interpolations are not followed)."""
    found = []
    for key in node.keys():
        path = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            found.append(path)
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_interpolation():
            found += _missing_keys(child, f"{path}.")
    return found


def _section_problems(cfg: DictConfig, values: dict, key: str) -> List[str]:
    node = cfg.get(key)
    if not node:  # retention=none, or the group left out
        return [f"{key}: empty; choose an option ({', '.join(_options(key))})"] if key in REQUIRED_GROUPS else []
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):  # an option without a registered schema: its class's own
        schema, problem = _target_schema(values[key], key)
        if problem:
            return [problem]
    return problems(schema, values[key], key)


def _target_schema(values: dict, key: str):
    """(the ``settings_schema`` of the class a section's ``_target_`` names, or a problem). The
    composed config is the user's own command, so its classes are imported as instantiate would."""
    from hydra.utils import get_class

    target = values.get("_target_")
    if not target:
        return None, f"{key}: the option has no schema (its YAML needs `- /<name>_schema@_here_` in its defaults)"
    try:
        cls = get_class(target)
    except Exception as e:  # noqa: BLE001 - Hydra wraps the import error
        return None, f"{key}._target_={target!r}: cannot be imported ({e.__cause__ or e})"
    schema = getattr(cls, "settings_schema", None)
    if not dataclasses.is_dataclass(schema):
        return None, f"{key}._target_={target!r}: {cls.__name__} declares no settings_schema (a dataclass of its keys)"
    return schema, None


def _relation_problems(values: dict) -> List[str]:
    """Settings valid alone that do not work together, or not on this machine."""
    trainer = values.get("trainer") or {}
    found: List[str] = _prompt_list_problems(values)
    device = resolve_device(trainer.get("device", "auto"))
    if device.type == "cuda" and not _cuda_available():
        found.append(
            f"trainer.device={trainer.get('device')!r}: no CUDA GPU is visible to torch here; use trainer.device=auto or cpu"
        )
        return found
    if trainer.get("base_dtype") == "bf16":
        import torch

        amp = resolve_amp(trainer.get("amp", "auto"), device)
        if amp != torch.bfloat16:
            found.append(
                f"trainer.base_dtype='bf16': needs bf16 autocast, but trainer.amp={trainer.get('amp')} gives "
                f"{amp or 'fp32'} on {device}: set trainer.amp=bf16 (auto is bf16 on CUDA), or trainer.base_dtype=null"
            )
    return found


def _prompt_list_problems(values: dict) -> List[str]:
    """Lists of prompts given as files that cannot be read, and hard negatives that would never be asked."""
    found = []
    dataset, preserve = values.get("dataset") or {}, values.get("preserve") or {}
    for key, value in (
        ("dataset.negative_prompts", dataset.get("negative_prompts")),
        ("preserve.vocabulary", preserve.get("vocabulary")),
    ):
        try:
            read_prompt_list(value, key)
        except PromptListError as e:
            found.append(str(e))
    if dataset.get("negative_prompts") and dataset.get("num_hard_negatives") == 0:
        found.append(
            "dataset.negative_prompts: never asked with dataset.num_hard_negatives=0 (no negatives); set it to -1 (every "
            "negative) or a count drawn from the absent categories and these prompts"
        )
    return found


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _build(node: Optional[DictConfig], key: str, kind: type, found: List[str]):
    """The typed object a checked section builds (None for an empty section); a ``_target_`` that
    builds something else, or fails, is a problem naming the key."""
    if not node:
        return None
    try:
        built = instantiate(node)
    except Exception as e:  # noqa: BLE001 - Hydra wraps what the target raised
        found.append(f"{key}: {e.__cause__ or e}")
        return None
    if not isinstance(built, kind):
        found.append(
            f"{key}._target_={node.get('_target_')!r} built a {type(built).__name__}, not a "
            f"{kind.__module__}.{kind.__qualname__}"
        )
    return built


register()  # on import: every command composes through these schemas
