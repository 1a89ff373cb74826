"""One training at a time in a run directory: its owner (rank 0 of the run) holds ``training.lock``.

The lock is created atomically (``O_EXCL``) and names its owner: host, pid (and that process's start
time, against pid reuse), the SLURM job it belongs to, and a heartbeat the owner refreshes from a
background thread. A second training or resume in the directory stops at once, naming the directory,
the owner and what to do, unless the owner is gone:

* on the same host, its process no longer exists;
* it is an earlier run of this same SLURM job (a requeue runs after its predecessor has ended);
* on another host, its heartbeat is older than ``stale_after_s``.

A lock left by such a dead owner is taken over (moved aside atomically, so two takers cannot both
win). An owner whose lock was taken over (its heartbeat stalled past the limit) finds out at its next
heartbeat and stops at the next step, before writing anything more.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Optional

from sam3_lora.core.atomic_files import WriteError, atomic_write_text
from sam3_lora.core.documents import Fields, FiniteNumber, Kind, MapOf, Nullable
from sam3_lora.core.errors import UserError
from sam3_lora.runs import layout

log = logging.getLogger(__name__)


class RunDirectoryBusy(UserError, RuntimeError):
    """Another training owns the run directory."""

    raised_on_every_rank = True


class RunDirectoryLost(UserError, RuntimeError):
    """This training's lock was taken over by another (its heartbeat had stalled)."""

    raised_on_every_rank = True


def _process_start(pid: int) -> Optional[str]:
    """When process ``pid`` started (Linux: field 22 of /proc/<pid>/stat), or None where unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _slurm_job() -> Optional[str]:
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{job}_{task}" if task else job


@dataclass
class Owner:
    """What a lock file says about the training that holds it."""

    host: str
    pid: int
    started: float
    heartbeat: float
    token: str
    pid_start: Optional[str] = None
    slurm_job: Optional[str] = None
    hydra_files: Dict[str, str] = field(default_factory=dict)  # the owner's .hydra record, to put back

    @classmethod
    def me(cls, run_dir: Path) -> "Owner":
        now = time.time()
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            started=now,
            heartbeat=now,
            token=secrets.token_hex(8),
            pid_start=_process_start(os.getpid()),
            slurm_job=_slurm_job(),
            hydra_files=layout.hydra_record(run_dir),
        )

    def gone(self, stale_after_s: float) -> Optional[str]:
        """Why this owner no longer trains, or None while it may."""
        if self.host == socket.gethostname():
            start = _process_start(self.pid)
            if not _alive(self.pid) or (self.pid_start and start and start != self.pid_start):
                return f"its process {self.pid} on this host has ended"
            return None
        if self.slurm_job and self.slurm_job == _slurm_job():
            return f"it is an earlier run of this SLURM job ({self.slurm_job}), which has ended"
        age = time.time() - self.heartbeat
        if age > stale_after_s:
            return f"its heartbeat is {age:.0f} s old (more than {stale_after_s:.0f} s)"
        return None

    def describe(self) -> str:
        job = f", SLURM job {self.slurm_job}" if self.slurm_job else ""
        return (
            f"host {self.host}, pid {self.pid}{job}, training since {time.ctime(self.started)}, last heartbeat "
            f"{time.time() - self.heartbeat:.0f} s ago"
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def read_owner(run_dir) -> Optional[Owner]:
    """The training that holds ``run_dir`` (None when no lock, or an unreadable one)."""
    return _read(Path(run_dir) / layout.LOCK)


# What a lock file must hold to be believed; one that does not is treated as unreadable.
_OWNER_SHAPE = Fields(
    {
        "host": Kind(str),
        "pid": Kind(int),
        "started": FiniteNumber(),
        "heartbeat": FiniteNumber(),
        "token": Kind(str),
        "pid_start": Nullable(Kind(str)),
        "slurm_job": Nullable(Kind(str)),
        "hydra_files": MapOf(Kind(str)),
    },
    required=("host", "pid", "started", "heartbeat", "token"),
)


def _read(path: Path) -> Optional[Owner]:
    """The lock's owner, or None when there is no lock or it is half-written or not one of ours."""
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if _OWNER_SHAPE.problems(values, ""):
        return None
    return Owner(**{k: v for k, v in values.items() if k in Owner.__dataclass_fields__})


class RunDirectoryLock:
    """The lock of a run directory, held while training (``with RunDirectoryLock(run_dir): ...``)."""

    def __init__(self, run_dir, stale_after_s: float = 600.0, beat_every_s: Optional[float] = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / layout.LOCK
        self.stale_after_s = stale_after_s
        self.beat_every_s = beat_every_s or min(30.0, stale_after_s / 4)
        self.owner: Optional[Owner] = None
        self.lost: Optional[str] = None  # set by the heartbeat when another training took the lock
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "RunDirectoryLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, or stop with a :class:`RunDirectoryBusy` naming its owner."""
        me = Owner.me(self.run_dir)
        for _ in range(3):  # a race lost to another taker is retried, then reported
            if self._create(me):
                self.owner = me
                self._thread = threading.Thread(target=self._beat, name="run-directory heartbeat", daemon=True)
                self._thread.start()
                return
            holder = read_owner(self.run_dir)
            if holder is None:  # half-written by a racing creator, or unreadable: look again
                time.sleep(0.2)
                holder = read_owner(self.run_dir)
            why = holder.gone(self.stale_after_s) if holder is not None else "its lock file is unreadable"
            if why is None:
                self._refuse(holder)
            self._move_aside(holder)
        holder = read_owner(self.run_dir)
        self._refuse(holder)

    def _create(self, me: Owner) -> bool:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(asdict(me), f)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # a full disk, say: no half-written lock stays behind to block the next try
            self.path.unlink(missing_ok=True)
            raise WriteError(f"could not write {self.path} ({e}); nothing else was written") from e
        return True

    def _move_aside(self, holder: Optional[Owner]) -> None:
        """Remove a dead owner's lock; of two takers one moves it, the other finds nothing to move."""
        aside = self.path.with_name(f".{layout.LOCK}.{secrets.token_hex(4)}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        moved = _read(aside)
        if holder is not None and moved is not None and moved.token != holder.token:
            # A live lock created since we looked: put it back (unless yet another exists by now).
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)

    def _refuse(self, holder: Optional[Owner]) -> None:
        if holder is not None:  # Hydra rewrote .hydra/ for this launch: put the owner's record back
            layout.restore_hydra_record(self.run_dir, holder.hydra_files)
        who = holder.describe() if holder is not None else "unknown (unreadable lock file)"
        raise RunDirectoryBusy(
            f"{self.run_dir} is being trained by another run ({who}); nothing was written. Wait for it to end, or "
            f"train in another directory (another hydra.run.dir). If that run is dead on another host, its lock "
            f"({self.path}) counts as abandoned once its heartbeat is {self.stale_after_s:.0f} s old "
            "(trainer.stale_lock_s); then run this again to resume it."
        )

    def _beat(self) -> None:
        failing = False
        while not self._stop.wait(self.beat_every_s):
            try:
                self.heartbeat()
                failing = False
            except WriteError as e:  # the run goes on; its own saves say so if the disk stays full
                if not failing:
                    log.warning(
                        "the run directory's heartbeat could not be written (%s); training goes on, but after "
                        "trainer.stale_lock_s without one another training may take the directory over",
                        e,
                    )
                failing = True

    def heartbeat(self) -> None:
        """Refresh the heartbeat, or notice that another training took the lock over."""
        holder = read_owner(self.run_dir)
        if holder is None or holder.token != self.owner.token:
            self.lost = holder.describe() if holder is not None else "the lock file was removed"
            return
        self.owner.heartbeat = time.time()
        atomic_write_text(self.path, json.dumps(asdict(self.owner)))

    def check(self) -> None:
        """Stop (before anything more is written) when the lock was taken over."""
        if self.lost:
            raise RunDirectoryLost(
                f"{self.run_dir} was taken over by another training ({self.lost}) after this one's heartbeat "
                "stalled; this run stops without writing anything more."
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = read_owner(self.run_dir)
        if self.owner is not None and holder is not None and holder.token == self.owner.token:
            self.path.unlink(missing_ok=True)
        self.owner = None
