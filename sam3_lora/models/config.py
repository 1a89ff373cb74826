"""The ``model`` config group's settings for :func:`sam3_lora.models.build_model`: the stock SAM3 or one
of the small sizes of the same classes (``conf/model/sam3*.yaml``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from sam3_lora.core.schema import REQUIRED, one_of, setting
from sam3_lora.models.base_checkpoint import BaseCheckpointError, resolve_checkpoint
from sam3_lora.models.sizes import SIZES

STOCK = "sam3"


@dataclass
class ModelSettings:
    """``model=sam3`` (the stock 840M model, its weights from ``sam3.pt``) or a small size."""

    _target_: str = "sam3_lora.models.build_model"
    name: str = setting(
        REQUIRED, "sam3 (the stock model) or a size of sam3_lora/models/sizes.py", one_of(STOCK, *SIZES)
    )
    checkpoint_path: Optional[str] = setting(
        None,
        "base weights: sam3.pt, or a transformers SAM3 folder (or its model.safetensors), converted on load; "
        "null for a small size's random initialisation",
        names_run=False,
    )
    load_from_hub: bool = setting(False, "sam3: download sam3.pt from the Hub when online and logged in")
    random_init: bool = setting(False, "sam3: no weights at all (architecture checks, counting)")
    bpe_path: Optional[str] = setting(
        None, "the CLIP BPE vocabulary; null: the one open-clip-torch ships", names_run=False
    )

    def weights(self) -> str:
        """Where the base weights come from (``check`` prints it); a :class:`BaseCheckpointError` when
        they cannot be found."""
        if self.name != STOCK:
            if not self.checkpoint_path:
                return f"model '{self.name}': random initialisation (no checkpoint_path)"
            path = Path(self.checkpoint_path)
            if not path.exists():
                raise BaseCheckpointError(f"checkpoint for model '{self.name}' not found at '{path}'")
            return _describe(path)
        if self.random_init:
            return "random_init=true (no weights)"
        local = Path(os.path.expanduser(self.checkpoint_path)) if self.checkpoint_path else None
        if self.load_from_hub and (local is None or not local.exists()):
            return "downloaded from the hub at start (needs network and a licence)"
        resolved = resolve_checkpoint(self.checkpoint_path, load_from_hub=False)
        if resolved is None:
            raise BaseCheckpointError("no SAM3 checkpoint configured: set model.checkpoint_path=/path/to/sam3.pt")
        return _describe(Path(resolved))

    @staticmethod
    def relation_problems(values, key: str) -> List[str]:
        if values.get("name") != STOCK:
            return [
                f"{key}.{flag}={values[flag]!r}: only for {key}.name=sam3 (a small size builds its own weights)"
                for flag in ("load_from_hub", "random_init")
                if values.get(flag)
            ]
        return []


def _describe(path: Path) -> str:
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    size = sum(f.stat().st_size for f in files if f.is_file()) / 1e9
    kind = "transformers SAM3 folder, converted on load" if path.is_dir() else "file"
    return f"{path} ({kind}, {size:.1f} GB)"
