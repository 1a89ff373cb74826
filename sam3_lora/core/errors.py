"""The one error base the command-line entry points report without a traceback."""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Optional


class UserError(Exception):
    """A problem with the user's config, files or data. Entry points log its message
    (which names the file, field and fix) and exit with code 2."""

    # Raised by every process of a distributed run at the same point: only rank 0 says so.
    raised_on_every_rank = False


def find_user_error(e: Optional[BaseException]) -> Optional[UserError]:
    """``e`` or its cause chain's UserError (Hydra wraps errors raised while instantiating)."""
    while e is not None:
        if isinstance(e, UserError):
            return e
        e = e.__cause__
    return None


def _rank() -> int:
    """This process's rank in a distributed run (torchrun's RANK, SLURM's SLURM_PROCID), 0 alone."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) or 0)


# The exit code of a command stopped by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED_EXIT_CODE = 130


def exit_on_user_error(fn):
    """Decorator for entry points: a UserError becomes one logged message and exit code 2; Ctrl-C
    (where training does not catch it to save first, or pressed twice) one message and code 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            logging.getLogger("sam3_lora").error(
                "stopped by Ctrl-C. Every file is written whole or not at all: what was written before is intact "
                "(a training run resumes from its last checkpoint when the same command runs again)"
            )
            sys.exit(INTERRUPTED_EXIT_CODE)
        except Exception as e:  # noqa: BLE001 - anything else keeps its traceback
            cause = find_user_error(e)
            if cause is None:
                raise
            if not (cause.raised_on_every_rank and _rank() != 0):
                logging.getLogger("sam3_lora").error("%s", cause)
            sys.exit(2)

    return wrapper
