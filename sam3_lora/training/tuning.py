"""How a run tunes the model: LoRA (an adapter on the frozen base) or full fine-tuning (every weight).

The one place that reads the ``lora`` config group: what trains, how the shippable weights are
saved and named, and how results and tables name the tuned model. ``lora=none`` (an empty section)
is full fine-tuning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Union

from torch import nn

from sam3_lora.core.schema import HYDRA_KEYS, problems
from sam3_lora.lora import LoraConfig, LoraConfigError, inject_lora, save_adapter
from sam3_lora.lora.config import PARTS
from sam3_lora.lora.targets import plan_targets
from sam3_lora.models.sam3_layout import save_sam3_checkpoint
from sam3_lora.runs import layout

log = logging.getLogger(__name__)
TRUNK = PARTS["vision"]  # the image trunk's module prefix


@dataclass
class LoraTuning:
    """LoRA on the frozen base (``lora=minimal|balanced|full``): ships an adapter file."""

    config: LoraConfig
    base_model: str  # the model config's name, recorded in the adapter (which base it fits)

    label = "lora"  # the tuned model's key in results.json
    title = "LoRA (best)"  # its row in the tables
    weights_kind = "adapter"

    def apply(self, model: nn.Module) -> None:
        """Inject the adapter and freeze everything else."""
        log.info(inject_lora(model, self.config).describe())

    @staticmethod
    def weights_file(tag: str) -> str:
        return layout.adapter_file(tag)

    def save(self, model: nn.Module, tag: str, run_dir: Path) -> Path:
        return save_adapter(model, Path(run_dir) / self.weights_file(tag), base_model=self.base_model)

    def record(self) -> Dict[str, Any]:
        """What results.json and the hyper-parameter views record of the tuning."""
        return {"label": self.label, "config": self.config.to_dict()}

    def adapts_trunk(self, model: nn.Module) -> bool:
        """Whether training changes the image trunk (an adapter or a module_to_save in it)."""
        plan = plan_targets(model, self.config)
        return any(name.startswith(TRUNK) for name in (*plan.linear, *plan.attention, *plan.modules_to_save))


@dataclass
class FullFineTuning:
    """Every weight trains (``lora=none``): ships full weights in sam3.pt's layout, which
    ``model.checkpoint_path`` and stock sam3 load."""

    label = "finetuned"
    title = "fine-tuned (best)"
    weights_kind = "weights"

    def apply(self, model: nn.Module) -> None:
        model.requires_grad_(True)
        log.info("no LoRA configured: fine-tuning every weight")

    @staticmethod
    def weights_file(tag: str) -> str:
        return layout.full_weights_file(tag)

    def save(self, model: nn.Module, tag: str, run_dir: Path) -> Path:
        return save_sam3_checkpoint(model, Path(run_dir) / self.weights_file(tag))

    def record(self) -> Dict[str, Any]:
        return {"label": self.label, "config": None}

    def adapts_trunk(self, model: nn.Module) -> bool:
        return True


Tuning = Union[LoraTuning, FullFineTuning]
# By the label results.json records: what a run's tuned model is called and which files it ships.
TUNINGS = {kind.label: kind for kind in (LoraTuning, FullFineTuning)}


def tuning_from(config: Mapping[str, Any]) -> Tuning:
    """The tuning a resolved training config's ``lora`` section asks for; a :class:`LoraConfigError`
    lists every problem of the section (unknown keys, values out of range)."""
    lora_section = config.get("lora")
    if not lora_section:
        return FullFineTuning()
    values = {k: v for k, v in lora_section.items() if k not in HYDRA_KEYS}
    found = problems(LoraConfig, values, "lora")
    if found:
        raise LoraConfigError("; ".join(found), found)
    return LoraTuning(LoraConfig(**values), base_model=(config.get("model") or {}).get("name", ""))
