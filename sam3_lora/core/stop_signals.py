"""The signals that stop a training run, and the data-loading workers' part in them.

SLURM's warning before a time limit or preemption (submitit uses USR2, plain sbatch --signal often
USR1), the SIGTERM that precedes a kill, and Ctrl-C (SIGINT): the trainer (``training/guards.py``)
saves at the next step boundary on each. A terminal's Ctrl-C and ``scancel`` reach every process of
the job, the loader's workers too: they ignore these, so only the main process decides, and a worker
killed mid-batch never turns a clean stop into "DataLoader worker exited unexpectedly".
"""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: the stop signals are the main process's to act on."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
