"""LoRA on the frozen base (``lora=minimal|balanced|full|heads``): ships an adapter file."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

from torch import nn

from sam3_lora.lora import AdapterInfo, LoraConfig, inject_lora, load_adapter, save_adapter
from sam3_lora.lora.config import PARTS
from sam3_lora.lora.targets import plan_targets
from sam3_lora.runs import layout
from sam3_lora.runs.results import LORA_LABEL
from sam3_lora.tuning.method import TuningMethod

log = logging.getLogger(__name__)


class LoraTuning(TuningMethod):
    """LoRA: low-rank updates on chosen projections, everything else frozen. Its settings are
    :class:`~sam3_lora.lora.LoraConfig`'s (``lora.rank``, ``lora.alpha``, ...)."""

    settings_schema = LoraConfig
    label = LORA_LABEL
    title = "LoRA (best)"
    name = "LoRA"
    weights_kind = "adapter"
    weights_title = "adapter (sam3_lora format)"
    export_formats = ("merged", "peft", "transformers", "transformers-peft")
    scalable = True

    def __init__(self, config: Optional[LoraConfig] = None, **settings: Any):
        self.config = config if config is not None else LoraConfig(**settings)

    def apply(self, model: nn.Module) -> None:
        """Inject the adapter and freeze everything else."""
        log.info(inject_lora(model, self.config).describe())

    def adapts_trunk(self, model: nn.Module) -> bool:
        """An adapter or a module_to_save planned in the image trunk (asked before ``apply``)."""
        plan = plan_targets(model, self.config)
        return any(name.startswith(PARTS["vision"]) for name in (*plan.linear, *plan.attention, *plan.modules_to_save))

    def base_inside(self) -> bool:
        return not self.config.modules_to_save  # modules_to_save train base weights in place

    def weights_file(self, tag: str) -> str:
        return layout.adapter_file(tag)

    def save(self, model: nn.Module, tag: str, run_dir: Path, base_model: str = "") -> Path:
        return save_adapter(model, Path(run_dir) / self.weights_file(tag), base_model=base_model)

    def load(self, model: nn.Module, path: Path, allow_base_mismatch: bool = False) -> Optional[AdapterInfo]:
        return load_adapter(model, path, allow_base_mismatch)

    def settings(self) -> Dict[str, Any]:
        return self.config.to_dict()

    def export_title(self, fmt: str) -> str:
        return "LoRA-tuned model" if fmt in ("merged", "transformers") else "LoRA adapter"

    def export_note(self, fmt: str) -> str:
        saved = self.config.modules_to_save
        return f", modules_to_save: {', '.join(saved)}" if saved else ""

    def card_lines(self, trainable: Optional[int]) -> List[str]:
        cfg = self.config
        rows = [
            ("rank", cfg.rank),
            ("alpha", f"{cfg.alpha:g} (scale {cfg.scale:g}{', rsLoRA' if cfg.use_rslora else ''})"),
            ("dropout", f"{cfg.dropout:g}"),
            ("targets", ", ".join(cfg.targets)),
            ("parts", ", ".join(cfg.parts)),
            ("target_regex", cfg.target_regex or "none"),
            ("modules_to_save", ", ".join(cfg.modules_to_save) or "none"),
            ("trainable parameters", f"{trainable:,}" if trainable is not None else "not recorded"),
        ]
        return ["| setting | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
