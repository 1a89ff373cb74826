"""Where the Hydra configs live, and the ``model`` group's options read as data (how to name a base
model on the command line)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Dict, Optional

import yaml

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")

# The ``model`` config group: one file per command-line option (``model=<file stem>``).
MODEL_CONF_DIR = Path(CONF_DIR) / "model"


@functools.lru_cache(maxsize=None)
def model_names() -> Dict[str, str]:
    """``{option: name}`` for every file of the ``model`` config group (each names its model)."""
    return {
        path.stem: (yaml.safe_load(path.read_text()) or {}).get("name")
        for path in sorted(MODEL_CONF_DIR.glob("*.yaml"))
    }


def model_option(name: str) -> Optional[str]:
    """The ``model=`` option whose config has ``name: <name>`` (``tiny_toy`` -> ``sam3_tiny_toy``)."""
    return next((option for option, n in model_names().items() if n == name), None)
