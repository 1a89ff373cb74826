"""Typed settings: each setting's default, meaning and valid values declared once, as a dataclass field
beside the code it configures (one dataclass per config group option).

Hydra composes the YAML presets over these dataclasses (structured configs, registered by
``sam3_lora/pipeline/settings.py``), so a value of the wrong type, or a key removed, is refused while
the config is composed. :func:`problems` checks what types cannot say: ranges, choices, and keys
added with ``+key=value`` that no dataclass declares. Every problem reads
``<key>=<value>: <what is valid>``.

    rank: int = setting(8, "rank r of each update", at_least(1, "a positive integer (e.g. 4, 8, 16)"))
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Callable, List, Mapping, Optional, Sequence, Union

# Keys Hydra reads from a config node; they are no settings.
HYDRA_KEYS = ("_target_", "_convert_", "_recursive_", "_partial_", "_args_")
# A value only the user (or a preset) can give: OmegaConf's MISSING, '???' in YAML.
REQUIRED = "???"


@dataclass(frozen=True)
class Valid:
    """What values a setting takes: ``test`` says whether one is valid, ``says`` what is valid (or,
    called with the value, what is wrong with it)."""

    test: Callable[[Any], bool]
    says: Union[str, Callable[[Any], str]]

    def __call__(self, value: Any) -> bool:
        try:
            return bool(self.test(value))
        except (TypeError, ValueError):
            return False

    def message(self, value: Any) -> str:
        return self.says(value) if callable(self.says) else self.says


def setting(
    default: Any = MISSING,
    doc: str = "",
    valid: Optional[Valid] = None,
    *,
    factory: Optional[Callable[[], Any]] = None,
    names_run: bool = True,
) -> Any:
    """A dataclass field with its meaning (``doc``) and valid values (``valid``). ``factory``: for a
    mutable default. ``names_run=False``: a path or machine setting, left out of a sweep point's
    directory name (``hydra.job.override_dirname``)."""
    metadata = {"doc": doc, "valid": valid, "names_run": names_run}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


def at_least(low: int, says: str = "", optional: bool = False) -> Valid:
    """An integer >= ``low`` (or None when ``optional``)."""
    default = f"an integer >= {low}" + (" or null" if optional else "")
    return Valid(lambda v: (optional and v is None) or (is_int(v) and v >= low), says or default)


def number_in(low: float, high: float, says: str, low_open: bool = False, high_open: bool = False) -> Valid:
    """A finite number in [low, high] (an end left out where open)."""

    def test(v):
        return is_number(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    return Valid(test, says)


def positive(says: str, optional: bool = False) -> Valid:
    return Valid(lambda v: (optional and v is None) or (is_number(v) and v > 0), says)


def one_of(*choices: Any, optional: bool = False) -> Valid:
    names = ", ".join(str(c) for c in choices)
    return Valid(
        lambda v: (optional and v is None) or v in choices, f"one of {names}" + (" or null" if optional else "")
    )


def show(value: Any) -> str:
    """A value as a command line would write it (``-1`` rather than ``-1.0``)."""
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value)


def _nested(kind: Any) -> Optional[type]:
    """The dataclass a field's type holds (``Split``, ``Optional[ToySpec]``), or None."""
    for candidate in (kind, *typing.get_args(kind)):
        if isinstance(candidate, type) and is_dataclass(candidate):
            return candidate
    return None


def problems(schema: type, values: Mapping[str, Any], key: str) -> List[str]:
    """Every problem of ``values`` (a resolved config section) against the dataclass ``schema``:
    keys it does not declare, declared keys missing, values outside their valid range. Nested
    dataclass fields are checked the same way under ``key.field``. Then, when every value is valid on
    its own, the schema's ``relation_problems(values, key)`` (if it has one): settings that only
    work together."""
    found: List[str] = []
    declared = {f.name: f for f in fields(schema)}
    types = typing.get_type_hints(schema)
    unknown = [k for k in values if k not in declared and k not in HYDRA_KEYS]
    for k in unknown:
        found.append(
            f"{key}.{k}: unknown key (the keys of {key}: {', '.join(n for n in declared if n not in HYDRA_KEYS)})"
        )
    for name, f in declared.items():
        if name in HYDRA_KEYS:
            continue
        if name not in values:
            found.append(f"{key}.{name}: missing key (set {key}.{name}=...)")
            continue
        value = values[name]
        nested = _nested(types[name])
        if nested is not None and isinstance(value, Mapping):
            found += problems(nested, value, f"{key}.{name}")
            continue
        valid = f.metadata.get("valid")
        if valid is not None and not valid(value):
            found.append(f"{key}.{name}={show(value)}: {valid.message(value)}")
    relations = getattr(schema, "relation_problems", None)
    if relations is not None and not found:
        found += relations(values, key)
    return found


def documented(schema: type) -> Sequence[str]:
    """The settings of ``schema`` that carry no meaning (a test keeps this empty)."""
    return [f.name for f in fields(schema) if f.name not in HYDRA_KEYS and not f.metadata.get("doc")]


def run_name_exclusions(schema: type, key: str) -> List[str]:
    """The dotted keys under ``key`` whose fields are marked ``names_run=False`` (nested included)."""
    out: List[str] = []
    types = typing.get_type_hints(schema)
    for f in fields(schema):
        nested = _nested(types[f.name])
        if not f.metadata.get("names_run", True):
            out.append(f"{key}.{f.name}")
        elif nested is not None:
            out += run_name_exclusions(nested, f"{key}.{f.name}")
    return out


def with_target(cls: type, target: Optional[type] = None) -> type:
    """The config-store node of a group whose options are typed by ``cls``: ``cls``'s fields plus
    ``_target_`` (``target``, else ``cls`` itself) and ``_convert_: object`` (nested sections arrive
    as their dataclasses, lists as lists), so ``hydra.utils.instantiate`` builds it like any other
    group's object, while ``cls`` itself stays a plain dataclass."""
    built = target or cls
    extra = [
        ("_target_", str, field(default=f"{built.__module__}.{built.__qualname__}")),
        ("_convert_", str, field(default="object")),
    ]
    return dataclasses.make_dataclass(cls.__name__, extra, bases=(cls,))
