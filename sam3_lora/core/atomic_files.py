"""Files written whole or not at all: a temporary file beside the destination, renamed into place.

A crash, a full disk or a preemption never leaves a half-written checkpoint, adapter or
merged model behind; ``written_together`` makes several such writes take effect as one.
Temporary files of writes that were killed are removed with ``remove_stale_temp_files``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple

import torch

from sam3_lora.core.errors import UserError

log = logging.getLogger(__name__)


class WriteError(UserError, RuntimeError):
    """A file that could not be written (the previous version, if any, is intact)."""


def tensor_bytes(obj: Any) -> int:
    """The bytes of the tensors in ``obj`` (a tensor, or dicts and lists of them): about what saving it writes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def _size(n: int) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{max(n, 1) / 2**10:.1f} KB"


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}_{secrets.token_hex(4)}.tmp")


_staged: Optional[List[Tuple[Path, Path]]] = None  # (temp file, destination) inside ``written_together``


@contextlib.contextmanager
def written_together():
    """The atomic writes inside this block take effect together once all are written, or
    none does (e.g. the best adapter and ``best.pt``: a full disk never leaves one newer)."""
    global _staged
    if _staged is not None:
        raise RuntimeError("written_together blocks do not nest")
    _staged = staged = []
    try:
        yield
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        _staged = None
    for tmp, path in staged:  # renames need no space: only the writes above could fail
        os.replace(tmp, path)


def atomic_write(path, write: Callable[[Path], None], nbytes: int, errors: Tuple[type, ...] = ()) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it into place.

    A failure to write (``OSError``, torch's ``RuntimeError`` "PytorchStreamWriter failed
    writing file", or any of ``errors``) leaves ``path`` as it was and becomes a
    WriteError naming the file, the space needed and the space free."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        # Created as any file is (mode from the umask); writers that make their own 0600 file
        # (safetensors, mkstemp) get that mode back.
        open(tmp, "xb").close()
        mode = os.stat(tmp).st_mode & 0o777
        write(tmp)
        os.chmod(tmp, mode)
        if _staged is not None:
            _staged.append((tmp, path))
            return path
        os.replace(tmp, path)
    except (OSError, RuntimeError, *errors) as e:
        tmp.unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
        raise WriteError(
            f"could not write {path} ({e}): it needs about {_size(nbytes)} in {path.parent}, which has {_size(free)} "
            f"free; {kept}."
        ) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    """A text file (JSON, a table, a card) through ``atomic_write``."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), len(data))


def atomic_write_json(path, obj: Any, indent: Optional[int] = 1) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent))


def atomic_write_csv(path, rows: Iterable[Sequence[Any]]) -> Path:
    text = io.StringIO(newline="")
    csv.writer(text).writerows(rows)
    return atomic_write_text(path, text.getvalue())


def atomic_save(obj: Any, path) -> Path:
    """``torch.save`` through ``atomic_write``: nothing half-written survives."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp), tensor_bytes(obj))


_TEMP_FILE = re.compile(r"^\..+\.(pt|safetensors|json|txt|md|csv|png|yaml|lock)\.[^.]+\.tmp$")


def remove_stale_temp_files(*folders: Path) -> List[Path]:
    """Delete the temporary files of saves that were killed before their rename."""
    removed = []
    for folder in folders:
        if Path(folder).is_dir():
            for f in Path(folder).glob(".*.tmp"):
                if _TEMP_FILE.match(f.name) and f.is_file():
                    f.unlink(missing_ok=True)
                    removed.append(f)
    if removed:
        log.info("removed %d temporary file(s) left by interrupted saves: %s", len(removed), [str(f) for f in removed])
    return removed
