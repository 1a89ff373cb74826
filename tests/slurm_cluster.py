"""A real one-machine SLURM cluster for the tests: munge, slurmctld and slurmd from
Debian's packages, with a generated slurm.conf under a temporary directory.

Installs the packages with apt-get when they are missing and we are root. Where that is
impossible the SLURM tests skip with the reason, except under CI (CI=true), where a
missing cluster is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

PACKAGES = ("munge", "slurmctld", "slurmd", "slurm-client")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "scancel")


def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"SLURM cluster required in CI: {reason}")
    pytest.skip(reason)


def _ensure_installed() -> None:
    if all(shutil.which(b) for b in BINARIES):
        return
    if os.geteuid() != 0:
        _unavailable("SLURM is not installed and installing it needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *PACKAGES]):
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            _unavailable(f"{' '.join(cmd)} failed: {res.stderr[-500:]}")


def _start_munge() -> None:
    if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0:
        return
    key = Path("/etc/munge/munge.key")
    if not key.is_file():
        subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True)
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    subprocess.run(["munged", "--force"], check=True, capture_output=True)
    for _ in range(50):
        if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    _unavailable("munged did not start")


CONF = """ClusterName=sam3lora
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
JobRequeue=1
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
NodeName={host} CPUs={cpus} RealMemory=8000 State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSlurm:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self) -> "LocalSlurm":
        _ensure_installed()
        if os.geteuid() != 0:
            _unavailable("slurmd must run as root")
        _start_munge()
        for d in ("state", "spool"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(
            CONF.format(
                host=host, root=self.root, ctld_port=_free_port(), d_port=_free_port(), cpus=os.cpu_count() or 2
            )
        )
        for daemon in ("slurmctld", "slurmd"):
            res = subprocess.run([daemon, "-f", str(self.conf)], capture_output=True, text=True, env=self.env)
            if res.returncode != 0:
                _unavailable(f"{daemon} failed to start: {res.stderr[-500:]}")
        for _ in range(100):
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=self.env).stdout
            if "idle" in out:
                return self
            time.sleep(0.2)
        _unavailable(f"the SLURM node never became idle; slurmd log: {self.log('slurmd')[-800:]}")

    def log(self, daemon: str) -> str:
        path = self.root / f"{daemon}.log"
        return path.read_text() if path.is_file() else ""

    def run(self, *cmd: str) -> str:
        return subprocess.run(list(cmd), capture_output=True, text=True, env=self.env, check=True).stdout

    def stop(self) -> None:
        subprocess.run(["scontrol", "shutdown"], capture_output=True, env=self.env)
        for pid_file in ("slurmd.pid", "slurmctld.pid"):
            pid = self.root / pid_file
            if pid.is_file():
                try:
                    os.kill(int(pid.read_text().strip()), 15)
                except (ProcessLookupError, ValueError):
                    pass
