"""The signals that stop a training run, and the data-loading workers' part in them.

SLURM's warning before a time limit or preemption (submitit uses USR2, plain sbatch --signal often
USR1), the SIGTERM that precedes a kill, and Ctrl-C (SIGINT): the trainer (``training/guards.py``)
saves at the next step boundary on each. A terminal's Ctrl-C and ``scancel`` reach every process of
the job, the loader's workers too, and a worker that died of one would stop the main process in the
middle of its step ("DataLoader worker is killed by signal"), before it could save. So a worker
ignores Ctrl-C, and on the others goes on serving batches for ``WORKER_GRACE_S``, time for the main
process to save and shut its workers down, then exits (the loader's own SIGTERM to a worker that
outstayed its shutdown still ends it, after the grace).
"""

from __future__ import annotations

import os
import signal
import threading

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)
WORKER_GRACE_S = 60.0


def shield_worker(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: the stop signals are the main process's to act on."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def exit_after_grace(signum, frame):
        timer = threading.Timer(WORKER_GRACE_S, os._exit, args=(0,))
        timer.daemon = True
        timer.start()

    for sig in STOP_SIGNALS:
        if sig != signal.SIGINT:
            signal.signal(sig, exit_after_grace)
