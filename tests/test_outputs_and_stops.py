"""Where a command writes is checked before it computes; a write that fails (a full disk) is one clean
message that keeps the previous files and leaves no temporary file; every way of stopping a training
run (Ctrl-C included) saves the same way and says how to resume."""

import errno
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import compose_command, tiny_run_overrides, train_in_process

from sam3_lora import evaluate as evaluate_cmd
from sam3_lora import export as export_cmd
from sam3_lora import predict as predict_cmd
from sam3_lora.core import outputs
from sam3_lora.core.atomic_files import WriteError
from sam3_lora.core.outputs import OutputError
from sam3_lora.runs.lock import RunDirectoryLock
from sam3_lora.training import checkpoint as ckpt

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def finished_run(toy_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train_in_process(tiny_run_overrides(toy_root, "trainer.max_epochs=1"), run_dir)
    return run_dir


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fails the test if a command gets as far as loading its model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    for module in (evaluate_cmd, export_cmd, predict_cmd):
        monkeypatch.setattr(module, "load_tuned", refuse)


def test_outputs_that_cannot_be_written_are_refused_before_any_work(finished_run, toy_root, tmp_path, no_model_loads):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    with pytest.raises(OutputError, match=r"output=.*a_file: is a file, but a folder goes there"):
        evaluate_cmd.evaluate(compose_command("evaluate", run_dir=finished_run, output=a_file))
    with pytest.raises(OutputError, match=r"a_file is a file, so nothing can be created under it"):
        predict_cmd.run(
            compose_command("predict", run_dir=finished_run, images=toy_root / "test", output=a_file / "pred")
        )
    with pytest.raises(OutputError, match=r"output=.*: is a folder, but a file goes there"):
        export_cmd.export(compose_command("export", run_dir=finished_run, output=tmp_path))
    with pytest.raises(OutputError, match="already exists.*overwrite=true"):
        export_cmd.export(compose_command("export", run_dir=finished_run, output=a_file))
    assert a_file.read_text() == "not a folder"


def test_a_full_disk_is_refused_before_any_work(finished_run, tmp_path, monkeypatch, no_model_loads):
    class Usage:
        free = 10_000

    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: Usage)
    with pytest.raises(OutputError, match=r"has 0.0 MB free, and this writes about 1.0 MB"):
        evaluate_cmd.evaluate(compose_command("evaluate", run_dir=finished_run, output=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def _no_space(path, data):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_disk_that_fills_while_writing_keeps_the_previous_files(finished_run, tmp_path, monkeypatch):
    out = tmp_path / "scores"
    evaluate_cmd.evaluate(compose_command("evaluate", run_dir=finished_run, output=out, num_workers=0, score_threshold=0.5))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"eval_test.json", "eval_test.txt"} <= set(before)
    monkeypatch.setattr(pathlib.Path, "write_bytes", _no_space)  # every text write of the project's writers
    with pytest.raises(WriteError, match=r"could not write .*eval_test\.json .*No space left.*is intact"):
        evaluate_cmd.evaluate(compose_command("evaluate", run_dir=finished_run, output=out, num_workers=0, score_threshold=0.5))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporary file, nothing changed


def test_a_heartbeat_on_a_full_disk_warns_and_leaves_no_temporary_file(tmp_path, monkeypatch, caplog):
    crashed = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashed.append(args))
    with RunDirectoryLock(tmp_path, stale_after_s=600, beat_every_s=0.05) as lock:
        recorded = lock.path.read_text()
        monkeypatch.setattr(pathlib.Path, "write_bytes", _no_space)
        time.sleep(0.3)
        monkeypatch.undo()
        assert lock.path.read_text() == recorded  # the last good heartbeat stays
        assert sorted(p.name for p in tmp_path.iterdir()) == [lock.path.name]
    assert not crashed
    warnings = [r.getMessage() for r in caplog.records if "heartbeat could not be written" in r.getMessage()]
    assert len(warnings) == 1, warnings  # said once, not at every beat


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if path.is_file() and text in path.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared in {path}; exit {proc.poll()}")


def _start_training(toy_root, run_dir: Path) -> subprocess.Popen:
    args = tiny_run_overrides(
        toy_root, "trainer.max_epochs=200", "trainer.batch_size=1", "trainer.num_workers=1", f"hydra.run.dir={run_dir}"
    )
    return subprocess.Popen(
        [sys.executable, "-m", "sam3_lora.train", *args],
        cwd=run_dir.parent,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )


def test_every_stop_signal_saves_mid_epoch_and_says_how_to_resume(toy_root, tmp_path):
    """Ctrl-C and SIGTERM (two runs side by side), sent to the whole process group as a terminal and
    scancel do: the data-loading workers get them too."""
    stops = {signal.SIGINT: tmp_path / "ctrl_c" / "run", signal.SIGTERM: tmp_path / "sigterm" / "run"}
    procs = {}
    try:
        for stop, run_dir in stops.items():
            run_dir.parent.mkdir()
            procs[stop] = _start_training(toy_root, run_dir)
        for stop, proc in procs.items():
            _wait_for(stops[stop] / "training.log", "step 1 epoch 1 loss", proc)  # inside the first epoch
            os.killpg(proc.pid, stop)
        outputs = {stop: proc.communicate(timeout=120)[0] for stop, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    for stop, out in outputs.items():
        run_dir, name = stops[stop], signal.Signals(stop).name
        assert procs[stop].returncode == 2, f"{name}:\n{out[-3000:]}"
        assert "Traceback" not in out and "exited unexpectedly" not in out, out[-3000:]
        assert f"{name} received: saved epoch" in out and f"hydra.run.dir={run_dir} to resume" in out, out[-3000:]
        state = ckpt.load(run_dir / ckpt.CHECKPOINT_DIR / ckpt.LAST)
        assert state["epoch"] == 0 and state["batches_done"] > 0  # a mid-epoch checkpoint
