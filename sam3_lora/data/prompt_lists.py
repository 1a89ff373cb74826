"""Lists of concept names given in a config: inline (``[dog, car]``) or as a text file, one name a line
(``#`` lines are comments), or a shipped list's name (``coco80``: COCO's 80 categories; ``shipped.py``).

Used by ``dataset.negative_prompts`` (hard negatives beyond the dataset's categories) and
``preserve.vocabulary`` (the concepts distillation asks the base about).
"""

from __future__ import annotations

from typing import Any, List, Sequence

from sam3_lora.core.errors import UserError
from sam3_lora.data.shipped import list_file, not_found
from sam3_lora.sam3_compat.prompt_tokens import first_of_each_prompt


class PromptListError(UserError, ValueError):
    """A list of prompts that cannot be read: a missing file, a blank name, not a list."""


def is_prompt_list(value: Any) -> bool:
    """What a config may give: null, a list of names, or a path or shipped list's name (a string)."""
    return (
        value is None
        or isinstance(value, str)
        or (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value))
    )


def read_prompt_list(value: Any, key: str) -> List[str]:
    """The names ``value`` gives (in order; a name that is an earlier one's prompt again, exactly or as sam3's
    tokenizer reads it, dropped); ``key`` names the setting in errors."""
    if value is None:
        return []
    if isinstance(value, str):
        path = list_file(value)
        if path is None:
            raise PromptListError(not_found(key, value, f"a text file with one name a line, a list ({key}='[a, b]')"))
        names: Sequence[str] = [line.strip() for line in path.read_text().splitlines()]
        names = [n for n in names if n and not n.startswith("#")]
        where = f"{key} ({path})"
    else:
        names, where = [str(n).strip() for n in value], key
        if any(not n for n in names):
            raise PromptListError(f"{where}: a blank name; every entry must name a concept")
    if not names:
        raise PromptListError(f"{where}: no names; give at least one, or leave {key} unset")
    return first_of_each_prompt(names)  # names sam3's tokenizer reads alike are one prompt, like exact repeats
