"""Names that changed, old -> new, so that run directories written before a change resume, load and
report as they did. Plain strings: reading an old record imports nothing it names.

* ``conf/tuning/`` is ``conf/recipe/``: sweep directories named ``tuning=X`` are the setup ``recipe=X``.
* The ``lora`` group builds its tuning method (``sam3_lora/tuning/``): it recorded
  ``_target_: sam3_lora.lora.config.LoraConfig`` for LoRA and an empty section for full fine-tuning.
* The ``optimizer`` group builds over named parameters (``sam3_lora/training/optim.py``): it
  recorded ``torch.optim.AdamW`` / ``torch.optim.SGD``, and no ``lr_scales`` (one learning rate).
* Settings added since a record was written (``ADDED_SETTINGS``, ``ADDED_KEYS``) read as the value
  that behaves as that record's run did (masks trained, the best validation scored, no benchmark).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

RENAMED_GROUPS = {"tuning=": "recipe="}
LORA_TUNING = "sam3_lora.tuning.lora.LoraTuning"
FULL_FINE_TUNING = "sam3_lora.tuning.full.FullFineTuning"
# section -> {recorded _target_ -> today's}
RENAMED_TARGETS: Dict[str, Dict[str, str]] = {
    "lora": {"sam3_lora.lora.config.LoraConfig": LORA_TUNING},
    "optimizer": {"torch.optim.AdamW": "sam3_lora.training.optim.adamw", "torch.optim.SGD": "sam3_lora.training.optim.sgd"},
}
# section -> settings added since, with the value that behaves as the records before them did
ADDED_SETTINGS: Dict[str, Dict[str, Any]] = {
    "optimizer": {"lr_scales": []},
    "trainer": {"mask_loss": True},
    "final_eval": {"checkpoint": "best"},
}
# top-level keys added since, with the value the records before them meant
ADDED_KEYS: Dict[str, Any] = {"benchmark": None}
# section -> what an empty recorded section meant
EMPTY_SECTIONS = {"lora": {"_target_": FULL_FINE_TUNING}}


def current_override(override: str) -> str:
    """A sweep point's override (``tuning=lora_heads``) under its group's current name."""
    for old, new in RENAMED_GROUPS.items():
        if override.startswith(old):
            return new + override[len(old) :]
    return override


def current_section(key: str, section: Any) -> Any:
    """A recorded config section under today's names."""
    if not section and key in EMPTY_SECTIONS:
        return dict(EMPTY_SECTIONS[key])
    if not isinstance(section, Mapping):
        return section
    section = {**ADDED_SETTINGS.get(key, {}), **section}
    target = section.get("_target_")
    if isinstance(target, str) and target in RENAMED_TARGETS.get(key, {}):
        section["_target_"] = RENAMED_TARGETS[key][target]
    return section


def current_record(config: Mapping[str, Any]) -> Dict[str, Any]:
    """A recorded resolved config (a checkpoint's, ``.hydra/config.yaml``'s) under today's names."""
    out = {**ADDED_KEYS, **config}
    for key in {*RENAMED_TARGETS, *EMPTY_SECTIONS, *ADDED_SETTINGS}:
        if key in out or key in EMPTY_SECTIONS:
            out[key] = current_section(key, out.get(key))
    return out
