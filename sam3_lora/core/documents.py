"""JSON and YAML documents handed in by a user or left by an earlier run (``results.json``, a run's
``.hydra/`` files, held-out scores, a transformers ``config.json``): read whole and checked against the
shape their reader uses, or refused with one error naming the file, the key and the fix.

A crashed run leaves half a file and a hand edit leaves a string where a number was; a bare
``JSONDecodeError`` or ``KeyError`` names neither the file nor what to do. Each file kind's reader
lives with the class it fills (``runs/results.py``, ``pipeline/scoring.py``, ...) and states its
shape with the types below; parsing and the messages are here, once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Type

import yaml

from sam3_lora.core.errors import UserError

MAX_LISTED = 5  # problems named in one message
# What a run-written document may weigh (results.json is a few kB): a larger one is refused unread.
MAX_BYTES = 64 << 20


class DocumentError(UserError, ValueError):
    """A document that is missing, unreadable, not valid JSON or YAML, or not of the shape its reader uses."""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _at(key: str, part: str) -> str:
    return f"{key}.{part}" if key else part


class Shape:
    """What a value must be; ``problems`` says, one line per key, where it is not."""

    def problems(self, value: Any, key: str) -> List[str]:
        raise NotImplementedError


class Kind(Shape):
    """A value of one Python type: ``Kind(str)``, ``Kind(int)`` (never a bool), ``Kind(bool)``."""

    NAMES = {str: "a string", int: "an integer", bool: "true or false"}

    def __init__(self, type_: type):
        self.type = type_

    def problems(self, value, key):
        if isinstance(value, self.type) and (self.type is bool or not isinstance(value, bool)):
            return []
        return [f"{key or 'the document'}={_shown(value)}: not {self.NAMES.get(self.type, self.type.__name__)}"]


class FiniteNumber(Shape):
    """An int or float (not a bool), neither NaN nor infinite: a figure anything may be computed from."""

    def problems(self, value, key):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return []
        return [f"{key or 'the document'}={_shown(value)}: not a finite number"]


class Nullable(Shape):
    """``shape``, or null (a figure the run did not record)."""

    def __init__(self, shape: Shape):
        self.shape = shape

    def problems(self, value, key):
        return [] if value is None else self.shape.problems(value, key)


class Either(Shape):
    """One of two shapes (a name or a list of names, say); the problems named are the second's."""

    def __init__(self, first: Shape, second: Shape):
        self.first, self.second = first, second

    def problems(self, value, key):
        return [] if not self.first.problems(value, key) else self.second.problems(value, key)


class ListOf(Shape):
    """A list of ``item``s."""

    def __init__(self, item: Shape):
        self.item = item

    def problems(self, value, key):
        if not isinstance(value, list):
            return [f"{key or 'the document'}={_shown(value)}: not a list"]
        return [p for i, v in enumerate(value) for p in self.item.problems(v, f"{key}[{i}]")]


class MapOf(Shape):
    """A mapping from strings to ``value``s (metric name -> figure, say)."""

    def __init__(self, value: Shape):
        self.value = value

    def problems(self, value, key):
        if not isinstance(value, dict):
            return [f"{key or 'the document'}={_shown(value)}: not a mapping"]
        found = [f"{key or 'the document'}: key {_shown(k)} is not a string" for k in value if not isinstance(k, str)]
        return found + [p for k, v in value.items() for p in self.value.problems(v, f"{key}[{k!r}]")]


class Fields(Shape):
    """A mapping with named fields: each present one of its shape, ``required`` ones present. Other
    keys are left alone (a newer writer's additions), so an older reader still reads the file."""

    def __init__(self, fields: Mapping[str, Shape], required: Sequence[str] = ()):
        self.fields, self.required = dict(fields), tuple(required)

    def problems(self, value, key):
        if not isinstance(value, dict):
            return [f"{key or 'the document'}={_shown(value)}: not a mapping"]
        found = [f"{_at(key, name)}: missing" for name in self.required if name not in value]
        for name, shape in self.fields.items():
            if name in value:
                found += shape.problems(value[name], _at(key, name))
        return found


class Anything(Shape):
    """Any value: a record whose content its own reader checks (a keeping method's settings, say)."""

    def problems(self, value, key):
        return []


def require_shape(value: Any, shape: Shape, path, what: str, fix: str, error: Type[UserError] = DocumentError) -> Any:
    """``value`` (read from ``path``, a ``what``) if it has ``shape``; else ``error`` naming the keys and the fix."""
    found = shape.problems(value, "")
    if found:
        more = f" (and {len(found) - MAX_LISTED} more)" if len(found) > MAX_LISTED else ""
        raise error(f"{path}: not a usable {what}: {'; '.join(found[:MAX_LISTED])}{more}. {fix}")
    return value


def _parse_json(text: str, path: Path, what: str, fix: str, error) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        ends_early = e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated string")
        cut = " (the file ends early: it was being written when its run stopped?)" if ends_early else ""
        raise error(f"{path}: not a readable {what}: line {e.lineno} column {e.colno}: {e.msg}{cut}. {fix}") from e
    except RecursionError as e:
        raise error(f"{path}: not a readable {what}: nested too deeply. {fix}") from e


def _text(path: Path, what: str, fix: str, error, max_bytes: Optional[int] = MAX_BYTES) -> str:
    if not path.is_file():
        raise error(f"{path}: no such {what} file. {fix}")
    try:
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            limit = f"at most {max_bytes >> 20} MiB"
            raise error(f"{path}: {size / 2**20:.0f} MiB, too large for a {what} ({limit}). {fix}")
        return path.read_bytes().decode("utf-8")
    except OSError as e:
        raise error(f"{path}: the {what} cannot be read ({e.strerror or e}). {fix}") from e
    except UnicodeDecodeError as e:
        raise error(f"{path}: not a readable {what}: not UTF-8 text (byte {e.start}). {fix}") from e


def read_json(
    path,
    what: str,
    fix: str,
    shape: Shape = Fields({}),
    error: Type[UserError] = DocumentError,
    max_bytes: Optional[int] = MAX_BYTES,
) -> Any:
    """The JSON document at ``path`` (a ``what``), of ``shape`` (default: any mapping). Missing,
    unreadable, larger than ``max_bytes`` (None: any size), truncated or invalid JSON and a wrong
    shape are each ``error`` naming the file, the key and ``fix``."""
    path = Path(path)
    value = _parse_json(_text(path, what, fix, error, max_bytes), path, what, fix, error)
    return require_shape(value, shape, path, what, fix, error)


def parse_json_text(text: str, where: str, what: str, fix: str, shape: Shape, error: Type[UserError] = DocumentError):
    """A JSON document held inside another file (a safetensors metadata value, say), checked like ``read_json``."""
    return require_shape(_parse_json(text, where, what, fix, error), shape, where, what, fix, error)


def read_yaml(path, what: str, fix: str, shape: Shape = Fields({}), error: Type[UserError] = DocumentError) -> Any:
    """The YAML document at ``path`` (plain YAML, as Hydra writes ``overrides.yaml``), of ``shape``;
    an empty file reads as null."""
    path = Path(path)
    text = _text(path, what, fix, error)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise error(f"{path}: not a readable {what} ({_first_line(e)}). {fix}") from e
    return require_shape(value, shape, path, what, fix, error)


def read_config(path, what: str, fix: str, error: Type[UserError] = DocumentError):
    """A config file as OmegaConf reads it (``.hydra/config.yaml``: its interpolations kept), a mapping."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(path)
    _text(path, what, fix, error)  # missing or not text: named
    try:
        cfg = OmegaConf.load(path)
    except (yaml.YAMLError, OmegaConfBaseException, UnicodeDecodeError, OSError) as e:
        raise error(f"{path}: not a readable {what} ({_first_line(e)}). {fix}") from e
    if not isinstance(cfg, DictConfig):
        raise error(f"{path}: not a usable {what}: not a mapping of settings. {fix}")
    return cfg
