"""Where a command will write, checked before it computes: the one check every command calls.

A command that would fail to write its result (the output is a file where a folder is wanted, or the
reverse; a folder that cannot be created or written; a disk too full for what it will write; files
of an earlier run in the way) stops here, before minutes of work, and writes nothing. The probe
leaves nothing behind: the folder itself is created only by the writes that come after the work.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Optional

from sam3_lora.core.errors import UserError

# What a command's small outputs (JSON, tables, overlays) need at least; large writes say their size.
SMALL_OUTPUT_BYTES = 1 << 20


class OutputError(UserError, OSError):
    """An output a command cannot write (nothing was computed or written)."""


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


def _existing_ancestor(path: Path) -> Path:
    """``path`` itself or the nearest folder above it that exists (what a write would create under)."""
    here = path.absolute()
    while not here.exists():
        if here.parent == here:
            break
        here = here.parent
    return here


def check_output(
    path,
    key: str,
    *,
    folder: bool,
    overwrite: bool = True,
    needs_bytes: int = SMALL_OUTPUT_BYTES,
    replaces: Iterable[str] = (),
) -> Path:
    """``path`` (the setting ``key``) can take the command's output: a folder (``folder=True``) or a
    file, creatable and writable, on a disk with ``needs_bytes`` free. Without ``overwrite``, an
    existing file (or a folder holding files) is refused; ``replaces``: the names inside the folder the
    command will replace, refused alone when they exist (the folder may hold other files)."""
    path = Path(path)
    fix = f"choose another {key}=..."
    if path.is_dir() and not folder:
        raise OutputError(f"{key}={path}: is a folder, but a file goes there; {fix} (a file path)")
    if path.exists() and not path.is_dir() and folder:
        raise OutputError(f"{key}={path}: is a file, but a folder goes there; {fix} (a folder path)")
    if not overwrite:
        taken = _taken(path, folder, replaces)
        if taken is not None:
            raise OutputError(f"{key}={path}: {taken} already exists; {fix}, or set overwrite=true to replace it")
    where = _existing_ancestor(path if folder else path.parent)
    if not where.is_dir():
        raise OutputError(f"{key}={path}: {where} is a file, so nothing can be created under it; {fix}")
    _probe(where, key, path, fix)
    free = shutil.disk_usage(where).free
    if free < needs_bytes:
        raise OutputError(
            f"{key}={path}: {where} has {_size(free)} free, and this writes about {_size(needs_bytes)}; free some "
            f"space or {fix} on another disk"
        )
    return path


def _taken(path: Path, folder: bool, replaces: Iterable[str]) -> Optional[Path]:
    if not folder:
        return path if path.exists() else None
    names = list(replaces)
    if names:
        return next((path / n for n in names if (path / n).exists()), None)
    return path if path.is_dir() and any(path.iterdir()) else None


def _probe(where: Path, key: str, path: Path, fix: str) -> None:
    """A file created and removed in ``where``: permissions, a read-only file system, a missing mount."""
    try:
        with tempfile.TemporaryFile(dir=where, prefix=".sam3_lora_probe_"):
            pass
    except OSError as e:
        why = {errno.EACCES: "no permission to write", errno.EROFS: "a read-only file system"}.get(e.errno, e.strerror)
        raise OutputError(f"{key}={path}: cannot write in {where} ({why}); {fix}") from None
    if not os.access(where, os.W_OK | os.X_OK):
        raise OutputError(f"{key}={path}: cannot write in {where} (no permission to write); {fix}")
