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

import argparse
import dataclasses
import math
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Callable, List, Mapping, Optional, Sequence, Union

from sam3_lora.core.errors import UserError

# Keys Hydra reads from a config node; they are no settings.
HYDRA_KEYS = ("_target_", "_convert_", "_recursive_", "_partial_", "_args_")
# A value only the user (or a preset) can give: OmegaConf's MISSING, '???' in YAML.
REQUIRED = "???"
# Limits every setting keeps whatever its own range: no value this large is a real setting, and each
# would otherwise reach torch, numpy or the file system (an allocation, a seed, a path) and fail there.
LARGEST_INT = 2**31 - 1
LARGEST_NUMBER = 1e12
LONGEST_TEXT = 4096
LONGEST_LIST = 10_000


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
        if not callable(self.says):
            return self.says
        try:
            return self.says(value)
        except Exception:  # noqa: BLE001 - a message about a value it was not written for
            return "not a valid value"


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


def show(value: Any, longest: int = 60) -> str:
    """A value as a command line would write it (``-1`` rather than ``-1.0``), cut to ``longest``."""
    text = f"{value:g}" if isinstance(value, float) else repr(value)
    if isinstance(value, (list, tuple)) and len(value) > 5:
        text = f"[{', '.join(show(v, 20) for v in value[:3])}, ... ({len(value)} items)]"
    return text if len(text) <= longest else f"{text[: longest - 5]}...{text[-2:]} ({len(text)} characters)"


def out_of_bounds(value: Any) -> Optional[str]:
    """What is wrong with a value that no setting takes (too large, not finite, empty text), or None.
    Lists are checked item by item; mappings are sections, checked by their own schema."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return None if abs(value) <= LARGEST_INT else f"too large (at most {LARGEST_INT} in size)"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "not a finite number"
        return None if abs(value) <= LARGEST_NUMBER else f"too large (at most {LARGEST_NUMBER:g} in size)"
    if isinstance(value, str):
        if not value.strip():
            return "empty: give a value (or null, where the setting allows it)"
        if "\x00" in value:
            return "holds a NUL character"
        return None if len(value) <= LONGEST_TEXT else f"too long (at most {LONGEST_TEXT} characters)"
    if isinstance(value, (list, tuple)):
        if len(value) > LONGEST_LIST:
            return f"too long (at most {LONGEST_LIST} items)"
        for item in value:
            wrong = out_of_bounds(item)
            if wrong:
                return f"an item is {wrong}"
    return None


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
    of = f"the keys of {key}" if key else "the command's keys"
    for k in unknown:
        found.append(f"{dotted(key, k)}: unknown key ({of}: {', '.join(n for n in declared if n not in HYDRA_KEYS)})")
    for name, f in declared.items():
        if name in HYDRA_KEYS:
            continue
        where = dotted(key, name)
        if name not in values:
            found.append(f"{where}: missing key (set {where}=...)")
            continue
        value = values[name]
        nested = _nested(types[name])
        if nested is not None and isinstance(value, Mapping):
            found += problems(nested, value, where)
            continue
        wrong = None if isinstance(value, Mapping) else out_of_bounds(value)
        valid = f.metadata.get("valid")
        if wrong:  # what the setting takes (when its range refuses the value too), and why no setting takes it
            takes = valid is not None and not valid(value)
            found.append(f"{where}={show(value)}: " + (f"{valid.message(value)} ({wrong})" if takes else wrong))
        elif valid is not None and not valid(value):
            found.append(f"{where}={show(value)}: {valid.message(value)}")
    relations = getattr(schema, "relation_problems", None)
    if relations is not None and not found:
        found += relations(values, key)
    return found


def dotted(key: str, name: str) -> str:
    """``key.name``; ``name`` alone at a command's top level (``key`` empty)."""
    return f"{key}.{name}" if key else name


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


class SettingsError(UserError, ValueError):
    """Command-line settings that cannot work, each with its key, value and what is valid."""


def parse_command_line(schema: type, argv: Optional[Sequence[str]], description: str) -> Any:
    """A plain (non-Hydra) command's settings from ``argv``, by its schema: required fields are
    positional, the others ``--name value``; checked like every config section. Raises
    :class:`SettingsError` listing every problem."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(schema):
        if f.default is MISSING or f.default == REQUIRED:
            parser.add_argument(f.name, help=f.metadata.get("doc"))
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=f.default, help=f.metadata["doc"])
    values = vars(parser.parse_args(argv))
    found = problems(schema, values, "")
    if found:
        raise SettingsError("invalid settings (nothing was read or written):\n- " + "\n- ".join(found))
    return schema(**values)


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
