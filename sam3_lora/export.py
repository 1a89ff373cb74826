"""``python -m sam3_lora.export``: ship a tuned model.

* ``format=merged``: every LoRA update folded into the base weights, saved in sam3.pt's
  layout, so stock sam3 loads it with no sam3_lora installed:
  ``build_sam3_image_model(checkpoint_path="sam3_tuned.pt", bpe_path=..., load_from_HF=False)``, the BPE
  file from open-clip-torch (the sam3 wheel ships none; docs/using.md has the snippet).
* ``format=peft``: Hugging Face PEFT's adapter files on sam3's own modules (see
  ``sam3_lora/lora/peft_format.py`` for what converts exactly and what is refused).
* ``format=transformers``: the merged model as a transformers folder (``config.json`` +
  ``model.safetensors``) that ``transformers.Sam3Model.from_pretrained`` loads.
* ``format=transformers-peft``: a PEFT adapter on transformers' ``Sam3Model`` (every update exact).
* ``base=true``: the frozen base instead (merged or transformers): e.g. the base a transformers-peft
  adapter goes on, or ``sam3.pt`` converted to a transformers folder (``model=sam3 base=true``).

Every export writes a model card (``README.md`` in a folder, ``<name>.README.md`` beside a file);
``push_to_hub=REPO_ID`` then uploads it all. Nothing is written when anything is wrong, and an
existing output is never replaced unless ``overwrite=true``. The library code is in
``sam3_lora/hf/`` and ``sam3_lora/lora/``; this command only chooses.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Optional

import hydra
from omegaconf import DictConfig

from sam3_lora.core.conf import CONF_DIR
from sam3_lora.core.errors import UserError, exit_on_user_error
from sam3_lora.core.outputs import check_output
from sam3_lora.hf.hub import push_to_hub
from sam3_lora.hf.model_card import STOCK_BASE, RunFacts, export_card
from sam3_lora.hf.transformers_config import require_transformers
from sam3_lora.lora import count_trainable
from sam3_lora.lora.inject import base_weights_fingerprint, merged_state_dict
from sam3_lora.lora.peft_format import peft_adapter, save_peft_adapter
from sam3_lora.models.assembly import measure_size
from sam3_lora.models.sam3_layout import save_sam3_state
from sam3_lora.models.transformers_keymap import summarise
from sam3_lora.pipeline.settings import check_use_settings, run_command
from sam3_lora.pipeline.tuned import Tuned, load_tuned, output_dir
from sam3_lora.runs import layout

log = logging.getLogger("sam3_lora.export")

FILE_FORMATS = ("merged",)  # one file; the others write a folder
ADAPTER_FORMATS = ("peft", "transformers-peft")  # need an adapter: no base=true


class ExportError(UserError, ValueError):
    """An export that cannot be written as asked."""


def card_path(out: Path, fmt: str) -> Path:
    """Where an export's model card goes: inside a folder, or beside a file."""
    return out.with_suffix(".README.md") if fmt in FILE_FORMATS else out / layout.MODEL_CARD


def _check_request(cfg: DictConfig) -> Path:
    """Everything about the request that can be refused before any model is built."""
    check_use_settings(cfg)
    if cfg.format.startswith("transformers"):
        require_transformers(f"export format={cfg.format}")
    if cfg.get("base") and cfg.format in ADAPTER_FORMATS:
        raise ExportError(f"format={cfg.format} exports an adapter; base=true goes with format=merged or transformers")
    if cfg.get("adapter_scale", 1.0) != 1 and cfg.format in ADAPTER_FORMATS:
        raise ExportError(
            f"adapter_scale={cfg.adapter_scale} with format={cfg.format}: an adapter file holds the adapter as trained; "
            "a scaled model is exported merged (format=merged or transformers)"
        )
    if not (cfg.run_dir or cfg.adapter or cfg.get("base")):
        raise ExportError(
            "nothing to export: set run_dir=outputs/<date>/<time> or adapter=path/to/adapter.safetensors "
            "(or base=true with a model= config for the base alone)"
        )
    out, one_file = Path(cfg.output), cfg.format in FILE_FORMATS
    check_output(out, "output", folder=not one_file, overwrite=cfg.overwrite)
    if one_file:  # the card goes beside the file
        check_output(card_path(out, cfg.format), "output", folder=False, overwrite=cfg.overwrite)
    return out


def _facts(cfg: DictConfig, tuned: Tuned) -> RunFacts:
    if cfg.run_dir:
        facts = RunFacts.read(cfg.run_dir)
        if facts.tuning is None:  # an unfinished run (no results.json yet): the loaded weights say what it is
            facts.tuning = tuned.tuning
        return facts
    checkpoint = tuned.model_cfg.get("checkpoint_path")
    return RunFacts(
        model_name=tuned.model_cfg.get("name"),
        checkpoint_path=str(checkpoint) if checkpoint else None,
        tuning=tuned.tuning,
        trainable_parameters=count_trainable(tuned.model) if tuned.info else None,
    )


def _write(cfg: DictConfig, tuned: Tuned, out: Path) -> Dict[str, str]:
    """Write the export's files; return what had no counterpart in the target format (name -> why)."""
    fmt = cfg.format
    if fmt == "merged":
        provenance = {"base_model": tuned.model_cfg.name}
        if tuned.info is not None:
            provenance.update(
                merged_from=str(tuned.adapter),
                adapter_scale=tuned.adapter_scale,
                # what the adapter was trained on and what it was merged into (they differ only
                # under allow_base_mismatch=true); loading this adapter onto the merged file is refused
                adapter_base_weights_fingerprint=tuned.info.base_weights_fingerprint,
                base_weights_fingerprint=base_weights_fingerprint(tuned.model, tuned.info.modules_to_save),
            )
        save_sam3_state(merged_state_dict(tuned.model), out, sam3_lora=provenance)
        log.info(
            "merged %s into %s (%.1f MB); load it with sam3.model_builder.build_sam3_image_model("
            "checkpoint_path='%s', bpe_path=<open_clip's bpe_simple_vocab_16e6.txt.gz>, load_from_HF=False) "
            "(the snippet: docs/using.md)",
            tuned.adapter or "nothing (base=true)",
            out,
            out.stat().st_size / 1e6,
            out,
        )
        return {}
    if fmt == "peft":
        peft_adapter(tuned.model, cfg.peft.allow_partial)  # refuses before anything is written
        left_out = save_peft_adapter(tuned.model, output_dir(out, cfg.overwrite), cfg.peft.allow_partial)
        log.info(
            "PEFT adapter written to %s%s", out, f"; left out (no exact PEFT form): {left_out}" if left_out else ""
        )
        return {name: "no exact PEFT form on sam3's modules" for name in left_out}

    from sam3_lora.hf.transformers_model import save_transformers_model
    from sam3_lora.hf.transformers_peft import save_transformers_peft

    size = measure_size(tuned.model)
    if fmt == "transformers":
        left_out = save_transformers_model(merged_state_dict(tuned.model), size, output_dir(out, cfg.overwrite))
        log.info("transformers Sam3Model written to %s; load it with Sam3Model.from_pretrained('%s')", out, out)
        return left_out
    base = STOCK_BASE if tuned.model_cfg.get("name") == "sam3" else None
    left_out = save_transformers_peft(tuned.model, size, output_dir(out, cfg.overwrite), base_model_name_or_path=base)
    log.info("PEFT adapter on transformers' Sam3Model written to %s", out)
    return left_out


def export(cfg: DictConfig) -> Path:
    out = _check_request(cfg)
    tuned = load_tuned(cfg)
    if tuned.tuning is not None and cfg.format not in tuned.tuning.export_formats:
        raise ExportError(
            f"format={cfg.format}: a {tuned.tuning.name} run exports as {', '.join(tuned.tuning.export_formats)}"
        )
    left_out = _write(cfg, tuned, out)
    card = card_path(out, cfg.format)
    push = cfg.get("push_to_hub")
    facts = _facts(cfg, tuned)
    export_card(
        cfg.format,
        facts,
        output_name=out.name,
        left_out=left_out,
        base_only=bool(cfg.get("base")),
        pushed_to=f"https://huggingface.co/{push}" if push else None,
        adapter_scale=tuned.adapter_scale,
    ).write(card)
    for line in summarise(left_out):
        log.info("left out (no counterpart in format=%s): %s", cfg.format, line)
    if push:
        _push(push, out, cfg.format, card)
    return out


def _push(repo_id: str, out: Path, fmt: str, card: Path) -> Optional[str]:
    if fmt in FILE_FORMATS:
        return push_to_hub(repo_id, files=[(out, out.name), (card, layout.MODEL_CARD)])
    return push_to_hub(repo_id, folder=out)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    run_command(main)
