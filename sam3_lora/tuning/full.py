"""Full fine-tuning (``lora=none``): every weight trains; ships full weights in sam3.pt's layout,
which ``model.checkpoint_path`` and stock sam3 load."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

from torch import nn

from sam3_lora.lora import AdapterInfo
from sam3_lora.models.base_checkpoint import load_base_checkpoint
from sam3_lora.models.sam3_layout import save_sam3_checkpoint
from sam3_lora.runs import layout
from sam3_lora.runs.results import FULL_FINE_TUNING_LABEL
from sam3_lora.tuning.method import TuningMethod

log = logging.getLogger(__name__)


class FullFineTuning(TuningMethod):
    label = FULL_FINE_TUNING_LABEL
    title = "fine-tuned (best)"
    name = "full fine-tuning"
    weights_title = "full weights in sam3.pt's layout"
    card_title = "fine-tuned weights"

    def apply(self, model: nn.Module) -> None:
        model.requires_grad_(True)
        log.info("full fine-tuning: every weight trains")

    def weights_file(self, tag: str) -> str:
        return layout.full_weights_file(tag)

    def save(self, model: nn.Module, tag: str, run_dir: Path, base_model: str = "") -> Path:
        return save_sam3_checkpoint(model, Path(run_dir) / self.weights_file(tag))

    def load(self, model: nn.Module, path: Path, allow_base_mismatch: bool = False) -> Optional[AdapterInfo]:
        load_base_checkpoint(model, str(path))
        return None

    def card_lines(self, trainable: Optional[int]) -> List[str]:
        return ["No LoRA: every weight was fine-tuned." + (f" {trainable:,} trainable parameters." if trainable else "")]

    def files_line(self) -> str:
        return f"`{self.weights_file('best')}`: {self.weights_title}"
