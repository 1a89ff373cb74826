"""The interface every tuning method implements: what the rest of the package may ask of "how was
this model tuned". A method is one subclass and one ``conf/lora/<option>.yaml`` naming it in
``_target_``; its YAML keys are typed by ``settings_schema`` (checked before anything is built).

Subclasses register themselves by ``label`` (the tuned model's key in ``results.json``) and by
import path, so a run directory's record is read back into its method without importing anything
a file names (:mod:`sam3_lora.tuning.records`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Tuple

from torch import nn

from sam3_lora.lora import AdapterInfo

# Every concrete method, by results.json label and by the import path a config's _target_ gives.
BY_LABEL: Dict[str, type] = {}
BY_TARGET: Dict[str, type] = {}


@dataclass
class NoSettings:
    """A method configured by its ``_target_`` alone (any other key is refused)."""


class TuningMethod:
    """How a run tunes SAM3. Class attributes describe it; methods act on a model.

    ``label``: the tuned model's key in results.json (and the sweep report's); ``title``: its row in
    the tables; ``name``: in sentences ("LoRA", "full fine-tuning"); ``weights_kind``: what a run
    ships, in a word; ``weights_title``: the same, in a card; ``export_formats``: the ``python -m sam3_lora.export format=`` values it
    supports; ``scalable``: ``adapter_scale`` and ``adapters_off`` act on it (the base stays inside).
    """

    settings_schema: ClassVar[type] = NoSettings
    label: ClassVar[str] = ""
    title: ClassVar[str] = ""
    name: ClassVar[str] = ""
    weights_kind: ClassVar[str] = "weights"
    weights_title: ClassVar[str] = "weights"
    export_formats: ClassVar[Tuple[str, ...]] = ("merged", "transformers")
    scalable: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.label:
            BY_LABEL.setdefault(cls.label, cls)
            BY_TARGET[f"{cls.__module__}.{cls.__qualname__}"] = cls

    # ------------------------------------------------------------------ training
    def apply(self, model: nn.Module) -> None:
        """Make the model trainable as this method trains it (inject, freeze, unfreeze)."""
        raise NotImplementedError

    def adapts_trunk(self, model: nn.Module) -> bool:
        """Whether training will change the image trunk's output (asked before ``apply``: the trunk
        cache needs it frozen)."""
        return True

    def base_inside(self) -> bool:
        """Whether the tuned model with its adapters off is the exact base (distillation's teacher
        then needs no copy of the model)."""
        return False

    # ------------------------------------------------------------------ files
    def weights_file(self, tag: str) -> str:
        """The run directory's file of the shippable weights (``tag``: best or last)."""
        raise NotImplementedError

    def save(self, model: nn.Module, tag: str, run_dir: Path, base_model: str = "") -> Path:
        """Write the shippable weights; ``base_model``: the model config's name, recorded where the
        format keeps it."""
        raise NotImplementedError

    def load(self, model: nn.Module, path: Path, allow_base_mismatch: bool = False) -> Optional[AdapterInfo]:
        """Put saved weights (``weights_file``'s) into a freshly built base; an adapter's facts if any."""
        raise NotImplementedError

    # ------------------------------------------------------------------ descriptions
    def settings(self) -> Optional[Dict[str, Any]]:
        """The method's settings as results.json records them (None: it has none)."""
        return None

    def record(self) -> Dict[str, Any]:
        """What results.json and the hyper-parameter views record of the tuning."""
        return {"label": self.label, "config": self.settings()}

    def card_lines(self, trainable: Optional[int]) -> List[str]:
        """The model card's section on the method."""
        return [f"{self.name}: {trainable:,} trainable parameters." if trainable is not None else self.name]

    @property
    def card_title(self) -> str:
        """A run card's title: "SAM3 <this> (<run>)"."""
        return f"{self.name} {self.weights_kind}"

    def export_title(self, fmt: str) -> str:
        """An export card's title: "SAM3 <this> (<format>)"."""
        return f"{self.name}-tuned model"

    def export_note(self, fmt: str) -> str:
        """Words an export card's usage adds after what an adapter format carries (default: none)."""
        return ""

    def files_line(self) -> str:
        """The model card's line on the shipped weights."""
        return f"`{self.weights_file('best')}` / `{self.weights_file('last')}`: the {self.weights_title}"
