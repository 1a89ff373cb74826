"""Where the Hydra configs live, and composing one outside a Hydra command (check, tools, tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from omegaconf import DictConfig

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def compose_config(name: str, overrides: Iterable[str] = ()) -> DictConfig:
    """The config ``python -m sam3_lora.<name> <overrides>`` would run with (without ``hydra:``)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))
