"""What a text prompt becomes for SAM3: its token ids, from sam3's own tokenizer at the text encoder's
context length. Two names with equal ids are one prompt to the model (the tokenizer fixes mojibake,
unescapes HTML, collapses whitespace and lowercases, and keeps the first tokens that fit), so the data
checks treat them as one name.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

# VETextEncoder's context length, which every SAM3 builder keeps (sot, up to 30 tokens, eot).
TEXT_CONTEXT_LENGTH = 32


def default_bpe_path() -> str:
    """The CLIP BPE vocabulary SAM3's tokenizer needs.

    The sam3 wheel does not ship it; open-clip-torch ships a byte-identical copy.
    """
    import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"BPE vocabulary not found at {path}; reinstall open-clip-torch or set model.bpe_path")
    return str(path)


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from sam3.model.tokenizer_ve import SimpleTokenizer

    return SimpleTokenizer(bpe_path=default_bpe_path())


@functools.lru_cache(maxsize=65536)  # the same names are asked about by every check and dataset
def token_ids(name: str) -> Tuple[int, ...]:
    """The ids ``name`` is encoded as, up to its end-of-text token (the zero padding after it left out;
    id 0 is also a real token, ``!``, so zeros before it stay)."""
    tokenizer = _tokenizer()
    row = tokenizer([name], context_length=TEXT_CONTEXT_LENGTH)[0].tolist()
    return tuple(row[: row.index(tokenizer.eot_token_id) + 1])


def same_prompt_groups(names: Iterable[str]) -> List[List[str]]:
    """The names that become one prompt, grouped (distinct strings only; each group two or more)."""
    groups: Dict[Tuple[int, ...], List[str]] = {}
    for name in dict.fromkeys(names):
        groups.setdefault(token_ids(name), []).append(name)
    return [g for g in groups.values() if len(g) > 1]


def first_of_each_prompt(names: Iterable[str]) -> List[str]:
    """``names`` with every name that repeats an earlier one's prompt left out (order kept)."""
    seen, kept = set(), []
    for name in names:
        ids = token_ids(name)
        if ids not in seen:
            seen.add(ids)
            kept.append(name)
    return kept
