"""Multirun sweeps with the local launcher, the sweep report, launchers, and DDP via torchrun."""

import csv
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import CONF_DIR, tiny_run_overrides, train_in_process
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file
from wandb_records import read_records


def _env():
    return {**os.environ, "HYDRA_FULL_ERROR": "1", "WANDB_SILENT": "true"}


@pytest.mark.parametrize(
    "launcher,target",
    [
        ("local", "BasicLauncher"),
        ("submitit_local", "LocalLauncher"),
        ("slurm", "SlurmLauncher"),
    ],
)
def test_launcher_options_select_hydra_launchers(launcher, target):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[f"launcher={launcher}", "hydra.launcher.gpus_per_node=4"]
            if launcher == "slurm"
            else [f"launcher={launcher}"],
            return_hydra_config=True,
        )
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "slurm":
        assert cfg.hydra.launcher.tasks_per_node == 4  # one task per GPU
        assert {
            "partition",
            "account",
            "qos",
            "nodes",
            "cpus_per_task",
            "mem_gb",
            "timeout_min",
            "array_parallelism",
            "max_num_timeout",
            "additional_parameters",
            "signal_delay_s",
        } <= set(cfg.hydra.launcher)


def test_local_sweep_names_runs_groups_them_and_reports(toy_root, tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "lora.rank=2,4",
        "lora.alpha=4",
        f"hydra.sweep.dir={sweep}",
        *tiny_run_overrides(toy_root, "trainer.max_epochs=1", "logger=all"),
    ]
    res = subprocess.run(
        [sys.executable, "-m", "sam3_lora.train", *args],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    runs = sorted(p for p in sweep.iterdir() if (p / "results.json").is_file())
    assert len(runs) == 2
    assert all("lora.alpha=4" in r.name and "lora.rank=" in r.name for r in runs)  # named by overrides
    for run in runs:
        run_id = (run / "wandb_run_id").read_text()
        records = read_records(next(run.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb")))
        meta = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        assert (
            meta.run_group == str(sweep)
            and meta.display_name == json.loads((run / "results.json").read_text())["overrides"]
        )
    # The sweep report is written by the Hydra callback when the last run has ended.
    rows = list(csv.DictReader(open(sweep / "sweep_report.csv")))
    # Setups are named by what varies across the sweep (the shared lora.alpha=4 and the rest are left out).
    assert sorted(r["setup"] for r in rows) == ["lora.rank=2", "lora.rank=4"]
    assert float(rows[0]["trainable_parameters_mean"]) != float(rows[1]["trainable_parameters_mean"])
    assert (sweep / "sweep_report.png").stat().st_size > 5000
    assert "| lora.rank=2 | 1 |" in (sweep / "sweep_report.md").read_text()
    assert "sweep report:" in res.stdout + res.stderr


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one_process_with_the_same_global_batch(toy_root, tmp_path):
    common = ("trainer.max_epochs=2", "lora.dropout=0")
    two = tmp_path / "two"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        "-m",
        "sam3_lora.train",
        *tiny_run_overrides(toy_root, *common, "trainer.batch_size=1"),
        f"hydra.run.dir={two}",
    ]
    res = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    log = (two / "training.log").read_text()
    assert "DDP: trainable weights identical on all 2 ranks" in log
    assert "effective batch 2 (batch_size 1 x grad_accum 1 x 2 process(es))" in log

    one = tmp_path / "one"
    train_in_process(tiny_run_overrides(toy_root, *common, "trainer.batch_size=2"), one)
    a, b = load_file(two / "adapter_last.safetensors"), load_file(one / "adapter_last.safetensors")
    assert set(a) == set(b)
    for k in a:
        err = (a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-8)
        assert err < 5e-3, (k, float(err))
    assert torch.load(two / "checkpoints" / "last.pt", weights_only=False)["step"] == 4
