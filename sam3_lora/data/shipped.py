"""Lists shipped with the package (``sam3_lora/data/lists/``), named in a config without a path.

A setting that takes a text file (``preserve.vocabulary``, ``dataset.negative_prompts``, a split's
``image_ids``, ``preserve.image_ids``) also takes the bare name of one of these: ``coco80`` (COCO's 80
category names), ``coco_val2017`` (the 5000 val2017 image ids) and its fixed subsets
``coco_val2017_test500``, ``coco_val2017_valid250``, ``coco_val2017_anchors`` (each file's header says
where it came from and how it was drawn). A file that exists at the path given is always taken first.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

LISTS_DIR = Path(__file__).parent / "lists"


def shipped_names() -> List[str]:
    return sorted(p.stem for p in LISTS_DIR.glob("*.txt"))


def list_file(value: str) -> Optional[Path]:
    """The file ``value`` names: the path itself when it is a file, else the shipped list of that bare
    name (no folder, no suffix); None when it is neither."""
    path = Path(value)
    if path.is_file():
        return path
    if value and path.name == value and not path.suffix:
        shipped = LISTS_DIR / f"{value}.txt"
        if shipped.is_file():
            return shipped
    return None


def not_found(key: str, value: str, what: str) -> str:
    """The message for a ``value`` that names no file: what ``key`` takes instead."""
    return f"{key}={value}: no such file; give {what}, or a shipped list's name ({', '.join(shipped_names())})"
