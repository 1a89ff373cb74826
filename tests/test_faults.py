"""Faults a long sweep meets: twin runs in one run directory, weights holding NaN, a broken image among
many, a NaN on one DDP rank, a config group switched off with null. Real processes where the fault
needs them."""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import compose_command, compose_train, tiny_run_overrides, train_in_process
from PIL import Image
from safetensors.torch import load_file, save_file

from sam3_lora import evaluate as evaluate_cmd
from sam3_lora import export as export_cmd
from sam3_lora import predict as predict_cmd
from sam3_lora.core.errors import find_user_error
from sam3_lora.core.finite import NonFiniteWeightsError
from sam3_lora.models import build_model
from sam3_lora.models.sam3_layout import save_sam3_checkpoint
from sam3_lora.pipeline.settings import ConfigError, check_settings
from sam3_lora.predict import PredictError
from sam3_lora.runs import layout
from sam3_lora.runs.lock import RunDirectoryBusy, read_owner
from sam3_lora.training import checkpoint as ckpt

ROOT = Path(__file__).resolve().parent.parent


def _env(**extra):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1", **extra}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_NTASKS"):
        if key not in extra:
            env.pop(key, None)
    return env


def _train_cmd(toy_root, run_dir, *extra):
    return [sys.executable, "-m", "sam3_lora.train", *tiny_run_overrides(toy_root, *extra), f"hydra.run.dir={run_dir}"]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Until ``path`` exists (the running training wrote it); the process must still be running."""
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the first training ended early: {proc.communicate()[0][-3000:]}"
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.2)


def _snapshot(run_dir: Path) -> dict:
    """Every file of a run directory but the log (which a refused launch appends to) and the lock
    (whose heartbeat moves), by content."""
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name not in (layout.TRAINING_LOG, layout.LOCK)
    }


# --------------------------------------------------------------------------- twin runs
def test_a_second_training_in_a_training_run_directory_stops_and_touches_nothing(toy_root, tmp_path):
    run_dir = tmp_path / "run"
    command = _train_cmd(toy_root, run_dir, "trainer.max_epochs=40", "logger=tensorboard")
    first = subprocess.Popen(
        command, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _wait_for(run_dir / layout.CHECKPOINT_DIR / layout.LAST, first)  # it is training: a lock and a checkpoint
        owner = read_owner(run_dir)
        assert owner is not None and owner.pid == first.pid
        first.send_signal(signal.SIGSTOP)  # held still, so whatever changes now is the second one's doing
        before = _snapshot(run_dir)
        second = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
        out = second.stdout + second.stderr
        assert second.returncode == 2, out[-3000:]
        assert "Traceback" not in out
        assert f"{run_dir} is being trained by another run" in out
        assert f"host {socket.gethostname()}, pid {first.pid}" in out and "last heartbeat" in out
        assert "hydra.run.dir" in out  # what to do
        assert _snapshot(run_dir) == before  # weights, checkpoints, events, results, .hydra/ as they were
        first.send_signal(signal.SIGCONT)
        out, _ = first.communicate(timeout=600)
        assert first.returncode == 0, out[-3000:]
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGCONT)
            first.kill()
    assert json.loads((run_dir / layout.RESULTS).read_text())["results"]["lora"]
    assert not (run_dir / layout.LOCK).exists()  # released at the end


def test_a_killed_owners_lock_is_taken_over_and_the_run_resumes(toy_root, tmp_path):
    run_dir = tmp_path / "run"
    first = subprocess.Popen(
        _train_cmd(toy_root, run_dir, "trainer.max_epochs=40"),
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for(run_dir / layout.CHECKPOINT_DIR / layout.LAST, first)
    first.kill()  # SIGKILL: no cleanup, the lock stays behind
    first.wait()
    assert read_owner(run_dir).pid == first.pid
    summary = train_in_process(tiny_run_overrides(toy_root, "trainer.max_epochs=3"), run_dir)
    assert summary["results"]["lora"]
    assert ckpt.load(run_dir / layout.CHECKPOINT_DIR / layout.LAST)["epoch"] == 3
    assert not (run_dir / layout.LOCK).exists()


def _foreign_lock(run_dir: Path, heartbeat_age: float, **fields) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    owner = {"host": "gpu-node-17", "pid": 4242, "started": now - 3600, "heartbeat": now - heartbeat_age, "token": "t"}
    (run_dir / layout.LOCK).write_text(json.dumps({**owner, **fields}))


def test_a_lock_from_another_host_holds_until_its_heartbeat_is_stale(toy_root, tmp_path, monkeypatch):
    overrides = tiny_run_overrides(toy_root, "trainer.max_epochs=1", "trainer.stale_lock_s=600")
    _foreign_lock(tmp_path / "live", heartbeat_age=20)
    with pytest.raises(RunDirectoryBusy, match=r"host gpu-node-17, pid 4242, .*last heartbeat 2\d s ago.*600 s"):
        train_in_process(overrides, tmp_path / "live")
    assert not (tmp_path / "live" / layout.CHECKPOINT_DIR).exists()

    _foreign_lock(tmp_path / "stale", heartbeat_age=700)
    assert train_in_process(overrides, tmp_path / "stale")["results"]["lora"]

    # A requeued SLURM job takes over from its predecessor (same job id) at once, wherever that ran.
    monkeypatch.setenv("SLURM_JOB_ID", "9917")
    _foreign_lock(tmp_path / "requeued", heartbeat_age=20, slurm_job="9917")
    assert train_in_process(overrides, tmp_path / "requeued")["results"]["lora"]


@pytest.fixture(scope="module")
def finished_run(toy_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("finished")
    train_in_process(tiny_run_overrides(toy_root, "trainer.max_epochs=1"), run_dir)
    return run_dir


def test_evaluate_on_a_directory_being_trained_says_so(finished_run, tmp_path):
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])  # stands in for a trainer
    try:
        now = time.time()
        lock = {"host": socket.gethostname(), "pid": running.pid, "started": now, "heartbeat": now, "token": "t"}
        (finished_run / layout.LOCK).write_text(json.dumps(lock))
        result = evaluate_cmd.evaluate(compose_command("evaluate", run_dir=finished_run, num_workers=0))
        assert any(f"{finished_run} is being trained right now" in n for n in result["notes"])
        assert any("last complete files" in n for n in result["notes"])
    finally:
        running.kill()
        (finished_run / layout.LOCK).unlink()


# --------------------------------------------------------------------------- NaN in files
def _user_error(fn, *args):
    with pytest.raises(Exception) as info:
        fn(*args)
    cause = find_user_error(info.value)
    assert cause is not None, repr(info.value)
    return cause


def _poisoned_adapter(run_dir: Path, tmp_path: Path) -> tuple:
    source = run_dir / layout.adapter_file("best")
    tensors = load_file(source)
    name = sorted(tensors)[3]
    tensors[name].view(-1)[7] = float("nan")
    from safetensors import safe_open

    with safe_open(str(source), framework="pt") as f:
        metadata = f.metadata()
    poisoned = tmp_path / "poisoned.safetensors"
    save_file(tensors, poisoned, metadata=metadata)
    return poisoned, name, tensors[name].numel()


def test_an_adapter_holding_nan_is_refused_before_scoring(finished_run, tmp_path):
    poisoned, name, numel = _poisoned_adapter(finished_run, tmp_path)
    cfg = compose_command("evaluate", run_dir=finished_run, adapter=poisoned, num_workers=0, output=tmp_path / "eval")
    error = _user_error(evaluate_cmd.evaluate, cfg)
    assert isinstance(error, NonFiniteWeightsError)
    assert str(poisoned) in str(error) and f"{name}: 1 of {numel} values NaN/inf" in str(error)
    assert not (tmp_path / "eval").exists()  # no figure was printed or written
    out = tmp_path / "merged.pt"
    error = _user_error(
        export_cmd.export, compose_command("export", run_dir=finished_run, adapter=poisoned, output=out)
    )
    assert isinstance(error, NonFiniteWeightsError) and not out.exists()


def test_a_base_checkpoint_holding_inf_is_refused(tmp_path):
    model = build_model("tiny")
    with torch.no_grad():
        model.transformer.decoder.query_embed.weight[0, :3] = float("inf")
    save_sam3_checkpoint(model, tmp_path / "base.pt")
    with pytest.raises(NonFiniteWeightsError, match=r"base.pt: this SAM3 checkpoint .*query_embed.weight: 3 of"):
        build_model("tiny", checkpoint_path=str(tmp_path / "base.pt"))


def test_a_resume_checkpoint_holding_nan_is_refused(finished_run, tmp_path):
    state = torch.load(finished_run / layout.CHECKPOINT_DIR / layout.LAST, weights_only=True)
    name = sorted(state["trainable"])[0]
    state["trainable"][name].view(-1)[0] = float("nan")
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(NonFiniteWeightsError, match=rf"last.pt: this training checkpoint .*trainable\.{name}: 1 of"):
        ckpt.load(tmp_path / "last.pt")


def test_transformers_base_weights_holding_nan_are_refused(tmp_path):
    pytest.importorskip("transformers")
    from sam3_lora.hf.transformers_model import save_transformers_model
    from sam3_lora.models.assembly import measure_size

    model = build_model("tiny")
    save_transformers_model(model.state_dict(), measure_size(model), tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(NonFiniteWeightsError, match=rf"model.safetensors: .*{name}: 1 of"):
        build_model("tiny", checkpoint_path=str(tmp_path / "hf"))


# --------------------------------------------------------------------------- predict
def test_predict_skips_undecodable_images_and_lists_them(finished_run, toy_root, tmp_path, caplog):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("test_0000.png", "test_0001.png"):
        Image.open(toy_root / "test" / name).save(folder / name)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "cut.png").write_bytes((toy_root / "test" / "test_0002.png").read_bytes()[:200])
    (folder / "notes.txt").write_text("not an image")
    caplog.set_level("INFO", logger="sam3_lora.predict")
    out = predict_cmd.run(compose_command("predict", run_dir=finished_run, images=folder, output=tmp_path / "pred"))
    assert sorted(p.name for p in out.glob("*_overlay.png")) == [
        "0000_test_0000_overlay.png",
        "0001_test_0001_overlay.png",
    ]
    skipped = {
        Path(s["path"]).name: s["reason"]
        for s in json.loads((out / "predictions.coco.json").read_text())["info"]["skipped"]
    }
    assert set(skipped) == {"empty.jpg", "cut.png", "notes.txt"}
    assert skipped["empty.jpg"].startswith("cannot be decoded") and skipped["cut.png"].startswith("cannot be decoded")
    assert skipped["notes.txt"] == "not an image file"
    assert "skipped 3 entries" in caplog.text and "cut.png: cannot be decoded" in caplog.text

    cfg = compose_command(
        "predict", run_dir=finished_run, images=folder, output=tmp_path / "strict", stop_on_error=True
    )
    with pytest.raises(PredictError, match=r"cut.png cannot be decoded .*stop_on_error=true"):
        predict_cmd.run(cfg)
    assert not (tmp_path / "strict").exists()


def test_predict_fails_when_no_image_is_usable(finished_run, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"")
    (folder / "b.png").write_bytes(b"\x89PNG not really")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "sam3_lora.predict",
            f"run_dir={finished_run}",
            f"images={folder}",
            f"output={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 2 and "no image could be used" in out and "a.jpg" in out and "b.png" in out
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- DDP
NAN_ON_RANK_1 = textwrap.dedent(
    """
    import os, sys
    import sam3_lora.training.trainer as trainer
    if os.environ["RANK"] == "1":  # this rank's loss turns NaN; rank 0's stays finite
        real = trainer.core_loss
        trainer.core_loss = lambda losses: real(losses) * float("nan")
    from sam3_lora.train import main
    sys.argv[0] = "sam3_lora.train"
    main()
    """
)


def test_a_nan_on_one_ddp_rank_stops_both_ranks_with_one_message(toy_root, tmp_path):
    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(NAN_ON_RANK_1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [
        *tiny_run_overrides(toy_root, "trainer.batch_size=1", "trainer.max_epochs=10"),
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    ranks = [
        subprocess.Popen(
            [sys.executable, str(script), *args],
            cwd=tmp_path,
            env=_env(RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    started = time.time()
    try:
        outputs = [p.communicate(timeout=120)[0] for p in ranks]
    finally:
        for p in ranks:
            p.kill()
    assert time.time() - started < 120
    assert [p.returncode for p in ranks] == [2, 2], [o[-2000:] for o in outputs]
    stop = "loss was NaN/inf for 5 consecutive batches"
    assert stop in outputs[0] and stop not in outputs[1]  # one message: rank 0's
    assert "Traceback" not in outputs[0] + outputs[1]


# --------------------------------------------------------------------------- switching a group off
def test_retention_none_switches_it_off_and_null_is_a_clean_error(tmp_path):
    assert check_settings(compose_train(["retention=toy_base", "retention=none"])).retention is None
    assert check_settings(compose_train(["retention=toy_base", "~retention"])).retention is None
    with pytest.raises(
        ConfigError, match=r"retention=null: .*\(coco, coco_val2017, none, toy_base\).*retention=none \(or ~retention\)"
    ):
        compose_train(["retention=null"])
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "sam3_lora.train",
            "experiment=quickstart",
            "retention=null",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
        cwd=tmp_path,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 2 and "Traceback" not in out and "retention=none (or ~retention)" in out
