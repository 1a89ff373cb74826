"""``python -m sam3_lora.export``: ship a tuned model.

* ``format=merged``: every LoRA update folded into the base weights, saved in sam3.pt's
  layout, so stock sam3 loads it with no sam3_lora installed:
  ``sam3.model_builder.build_sam3_image_model(checkpoint_path="sam3_tuned.pt", load_from_HF=False)``.
* ``format=peft``: Hugging Face PEFT's adapter files (see ``sam3_lora/lora/peft_format.py``
  for what converts exactly and what is refused).

Nothing is written when anything is wrong, and an existing output is never replaced
unless ``overwrite=true``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from sam3_lora.core.conf import CONF_DIR
from sam3_lora.core.errors import UserError, exit_on_user_error
from sam3_lora.lora.inject import base_weights_fingerprint, merged_state_dict
from sam3_lora.lora.peft_format import peft_adapter, save_peft_adapter
from sam3_lora.models.sam3_layout import save_sam3_state
from sam3_lora.runs.tuned import load_tuned, output_dir

log = logging.getLogger("sam3_lora.export")


class ExportError(UserError, ValueError):
    """An export that cannot be written as asked."""


def export(cfg: DictConfig) -> Path:
    if cfg.format not in ("merged", "peft"):
        raise ExportError(f"format={cfg.format}: choose merged or peft")
    if not (cfg.run_dir or cfg.adapter):
        raise ExportError("nothing to export: set run_dir=outputs/<date>/<time> or adapter=path/to/adapter.safetensors")
    out = Path(cfg.output)
    if cfg.format == "merged" and out.exists() and not cfg.overwrite:
        raise ExportError(f"{out} exists; choose another output or set overwrite=true")
    tuned = load_tuned(cfg)
    if cfg.format == "merged":
        provenance = {
            "merged_from": str(tuned.adapter),
            "base_model": tuned.model_cfg.name,
            # what the adapter was trained on and what it was merged into (they differ only
            # under allow_base_mismatch=true); loading this adapter onto the merged file is refused
            "adapter_base_weights_fingerprint": tuned.info.base_weights_fingerprint,
            "base_weights_fingerprint": base_weights_fingerprint(tuned.model, tuned.info.modules_to_save),
        }
        save_sam3_state(merged_state_dict(tuned.model), out, sam3_lora=provenance)
        log.info(
            "merged %s into %s (%.1f MB); load it with sam3.model_builder.build_sam3_image_model("
            "checkpoint_path='%s', load_from_HF=False)",
            tuned.adapter,
            out,
            out.stat().st_size / 1e6,
            out,
        )
        return out
    peft_adapter(tuned.model, cfg.peft.allow_partial)  # refuses before anything is written
    left_out = save_peft_adapter(tuned.model, output_dir(out, cfg.overwrite), cfg.peft.allow_partial)
    log.info("PEFT adapter written to %s%s", out, f"; left out (no exact PEFT form): {left_out}" if left_out else "")
    return out


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
