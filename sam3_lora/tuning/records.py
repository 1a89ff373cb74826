"""A tuning method read back from what a run left: its ``results.json`` record, or its recorded
``lora`` config section. Files are data: a method is found in the registry of known classes
(:data:`~sam3_lora.tuning.method.BY_TARGET`), never imported by the name a file gives.

Run directories written before the ``lora`` group built its method recorded other names; they are
read under today's (:mod:`sam3_lora.runs.renames`), so they load as they did.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from omegaconf import DictConfig, OmegaConf

from sam3_lora.core.errors import UserError
from sam3_lora.core.schema import HYDRA_KEYS
from sam3_lora.runs.renames import current_section
from sam3_lora.tuning import full, lora  # noqa: F401 - registers the package's methods
from sam3_lora.tuning.method import BY_LABEL, BY_TARGET, TuningMethod


class TuningRecordError(UserError, ValueError):
    """A recorded tuning that names no method this package knows."""


def method_of_section(section: Optional[Mapping[str, Any]], where: str) -> TuningMethod:
    """The method a recorded ``lora`` section describes, built from the registry (nothing imported)."""
    values = current_section("lora", section)
    target = values.get("_target_")
    cls = BY_TARGET.get(target) if isinstance(target, str) else None
    if cls is None:
        raise TuningRecordError(
            f"{where}: lora._target_={target!r} is not a tuning method this package knows "
            f"({', '.join(sorted(BY_TARGET))}); nothing was built. Restore the run's .hydra/config.yaml, or pass "
            "model=<option> and adapter=<file> instead of run_dir="
        )
    settings = {k: v for k, v in values.items() if k not in HYDRA_KEYS}
    try:
        return cls(**settings)
    except (TypeError, ValueError) as e:
        raise TuningRecordError(f"{where}: the lora section does not describe a {cls.__name__} ({e})") from e


def method_of_run_config(config: DictConfig, where: str) -> TuningMethod:
    """The method a run's config (``.hydra/config.yaml``, as loaded) records in its ``lora`` group;
    only that section is resolved."""
    section = config.get("lora")
    return method_of_section(OmegaConf.to_container(section, resolve=True) if section else section, where)


def method_of_record(record: Mapping[str, Any]) -> Optional[TuningMethod]:
    """The method a results.json ``tuning`` record ({label, config}) names; None when it names none
    this package knows (a method of the user's own, or an older file without the record)."""
    cls = BY_LABEL.get(record.get("label") or "")
    if cls is None:
        return None
    names = {f.name for f in dataclasses.fields(cls.settings_schema)}
    config = {k: v for k, v in (record.get("config") or {}).items() if k in names}
    try:
        return cls(**config)
    except (TypeError, ValueError):
        return None
