"""Sweeps on a real SLURM cluster (started by the test), and preemption with requeue."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_overrides, train_in_process
from slurm_cluster import LocalSlurm


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()


def _slurm_overrides(toy_root, sweep_dir, *extra):
    return [
        "-m",
        "launcher=slurm",
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.launcher.partition=test",
        "hydra.launcher.gpus_per_node=0",
        "hydra.launcher.tasks_per_node=1",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=2",
        "hydra.launcher.timeout_min=30",
        "hydra.launcher.signal_delay_s=20",
        *tiny_run_overrides(toy_root, *extra),
    ]


def _launch(slurm, args, cwd):
    env = {**slurm.env, "HYDRA_FULL_ERROR": "1", "WANDB_SILENT": "true"}
    return subprocess.Popen(
        [sys.executable, "-m", "sam3_lora.train", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_rank_sweep_runs_as_slurm_jobs(slurm, toy_root, tmp_path):
    sweep = tmp_path / "sweep"
    proc = _launch(slurm, _slurm_overrides(toy_root, sweep, "lora.rank=2,4", "trainer.max_epochs=1"), tmp_path)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:] + slurm.log("slurmctld")[-1000:]
    runs = sorted(p for p in sweep.iterdir() if (p / "results.json").is_file())
    assert [r.name.split("lora.rank=")[1].split(",")[0] for r in runs] == ["2", "4"]
    for run in runs:
        assert (run / "adapter_best.safetensors").is_file() and (run / "metrics.json").is_file()
    # One job array, two tasks, each started by slurmd under its SLURM job id and logging there.
    logs = sorted((sweep / ".submitit").glob("*_*/*_0_log.out"))
    assert len(logs) == 2
    for path in logs:
        text = path.read_text()
        assert f"JobEnvironment(job_id={path.parent.name}" in text and "effective batch" in text
    assert "#SBATCH --partition=test" in next((sweep / ".submitit").glob("*/*_submission.sh")).read_text()


def _job_id(sweep: Path) -> str:
    for _ in range(600):
        ids = [p.name for p in (sweep / ".submitit").glob("*") if p.is_dir() and p.name[0].isdigit()]
        if ids:
            return sorted(ids)[0].split("_")[0]
        time.sleep(0.1)
    raise AssertionError("no SLURM job appeared")


def test_preempted_job_requeues_and_finishes_like_an_uninterrupted_run(slurm, toy_root, tmp_path):
    extra = ("trainer.max_epochs=12", "trainer.batch_size=1", "trainer.eval_every=4", "lora.dropout=0")
    reference = tmp_path / "reference"
    train_in_process(tiny_run_overrides(toy_root, *extra), reference)

    sweep = tmp_path / "sweep"
    proc = _launch(slurm, _slurm_overrides(toy_root, sweep, *extra), tmp_path)
    job = _job_id(sweep)
    run_dirs = lambda: [p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")]  # noqa: E731
    last = None
    for _ in range(1200):  # wait for the first epoch's checkpoint, then preempt
        dirs = run_dirs() if sweep.is_dir() else []
        if dirs and (dirs[0] / "checkpoints" / "last.pt").is_file():
            last = dirs[0] / "checkpoints" / "last.pt"
            break
        time.sleep(0.1)
    assert last is not None, "the job never checkpointed"
    slurm.run("scancel", "--signal=USR2", job)  # what SLURM sends before a time limit or preemption
    # SLURM holds a requeued job for a while (reason BeginTime); release it so the test need not wait.
    requeued = False
    for _ in range(600):
        state = slurm.run("squeue", "-h", "-j", job, "-o", "%T %r").strip()
        if state.startswith("PENDING") and "BeginTime" in state:
            slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now")
            requeued = True
            break
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    assert requeued, "the job was not requeued after the preemption signal"
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    run = run_dirs()[0]
    log = (run / "training.log").read_text()
    assert "SIGUSR2 received: saved epoch" in log and "resumed from" in log, log[-2000:]
    got = json.loads((run / "metrics.json").read_text())
    want = json.loads((reference / "metrics.json").read_text())
    assert [m["step"] for m in got] == [m["step"] for m in want]
    assert got[-1]["bbox/AP"] == pytest.approx(want[-1]["bbox/AP"], abs=1e-3)
    assert got[-1]["segm/AP"] == pytest.approx(want[-1]["segm/AP"], abs=1e-3)
    final = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert final["epoch"] == 12 and final["step"] == 48


def test_ddp_across_slurm_tasks(slurm, toy_root, tmp_path):
    """Two SLURM tasks of one job form a gloo process group from SLURM's variables."""
    sweep = tmp_path / "sweep"
    args = _slurm_overrides(toy_root, sweep, "trainer.max_epochs=1", "trainer.batch_size=1")
    args = [a if a != "hydra.launcher.tasks_per_node=1" else "hydra.launcher.tasks_per_node=2" for a in args]
    proc = _launch(slurm, args, tmp_path)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    (log,) = list(sweep.rglob("training.log"))
    text = log.read_text()
    assert "x 2 process(es)" in text and "DDP: trainable weights identical on all 2 ranks" in text
    assert len(list((sweep / ".submitit").glob("*/*_log.out"))) == 2  # one log per task
