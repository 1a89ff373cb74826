"""Where the Hydra configs live, composing one outside a Hydra command (check, tools, tests), and
reading the ``model`` group's options (what a run directory may build, how to name a base)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Dict, FrozenSet, Iterable, Optional, Tuple

import yaml
from omegaconf import DictConfig

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def compose_config(name: str, overrides: Iterable[str] = ()) -> DictConfig:
    """The config ``python -m sam3_lora.<name> <overrides>`` would run with (without ``hydra:``)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


# The ``model`` config group: one file per command-line option (``model=<file stem>``).
MODEL_CONF_DIR = Path(CONF_DIR) / "model"


@functools.lru_cache(maxsize=None)
def model_options() -> Dict[str, Tuple[str, str]]:
    """``{option: (_target_, name)}`` for every file of the ``model`` config group."""
    options = {}
    for path in sorted(MODEL_CONF_DIR.glob("*.yaml")):
        spec = yaml.safe_load(path.read_text()) or {}
        options[path.stem] = (spec.get("_target_"), spec.get("name"))
    return options


def model_builders() -> FrozenSet[str]:
    """The ``_target_``s the ``model`` config group uses: all a run directory's config may build."""
    return frozenset(target for target, _ in model_options().values() if target)


def model_option(name: str) -> Optional[str]:
    """The ``model=`` option whose config has ``name: <name>`` (``tiny_toy`` -> ``sam3_tiny_toy``)."""
    return next((option for option, (_, n) in model_options().items() if n == name), None)
