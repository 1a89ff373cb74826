"""Checkpoints and resume under hostile and broken input: crafted pickles are refused and never
run, other file kinds are named, changed settings are refused (or honoured, for the run length),
a full disk loses nothing, and files follow the umask.

Every refusal is checked as the command line reports it: exit code 2, one logged message naming
the file and the fix, no traceback."""

import logging
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_overrides, train_in_process
from hostile import crafted_plain_pickle, crafted_torch_file
from safetensors.torch import load_file

from sam3_lora.core.atomic_files import atomic_save
from sam3_lora.core.errors import exit_on_user_error
from sam3_lora.lora import LoraConfig, inject_lora, save_adapter
from sam3_lora.models.sam3_layout import save_sam3_checkpoint
from sam3_lora.training import checkpoint as ckpt
from sam3_lora.training.optim import warmup_cosine
from sam3_lora.training.trainer import Trainer

REPO = Path(__file__).resolve().parent.parent
RUN = ("trainer.max_epochs=1", "trainer.batch_size=2")  # 4 training images: 2 steps per epoch


def _overrides(toy_root, *extra):
    return tiny_run_overrides(toy_root, *RUN, *extra)


@pytest.fixture(scope="module")
def finished_run(toy_root, tmp_path_factory):
    """A finished one-epoch run (as `python -m sam3_lora.train` leaves it); tests work on copies."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train_in_process(_overrides(toy_root), run_dir)
    return run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path):
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def _refused(overrides, run_dir, caplog) -> str:
    """Run as the command line does; assert exit code 2 and one message without traceback."""
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="sam3_lora"), pytest.raises(SystemExit) as stop:
        exit_on_user_error(train_in_process)(overrides, run_dir)
    assert stop.value.code == 2
    (record,) = [r for r in caplog.records if r.name == "sam3_lora" and r.levelno == logging.ERROR]
    assert record.exc_info is None and "Traceback" not in record.getMessage()
    return record.getMessage()


def _bytes(run_dir):
    """Every checkpoint and adapter of a run, by name."""
    files = [*run_dir.glob("checkpoints/*.pt"), *run_dir.glob("adapter_*.safetensors")]
    return {f.relative_to(run_dir).as_posix(): f.read_bytes() for f in files}


def _temp_files(run_dir):
    return sorted(p.name for p in run_dir.rglob("*.tmp"))


def _cli(args, cwd, **kwargs):
    """`python -m sam3_lora.train` of this checkout in a subprocess."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_SILENT": "true"}
    cmd = [sys.executable, "-m", "sam3_lora.train", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kwargs)


# ---------------------------------------------------------------- 1. nothing is executed
CRAFTED = {"torch zip": crafted_torch_file, "bare pickle": crafted_plain_pickle}


@pytest.mark.parametrize("make", CRAFTED.values(), ids=CRAFTED.keys())
@pytest.mark.parametrize("route", ["trainer.resume=FILE", "trainer.resume=RUN_DIR", "auto-resume last.pt"])
def test_crafted_checkpoint_is_refused_on_every_resume_path(route, make, toy_root, tmp_path, caplog):
    marker, run_dir = tmp_path / "marker", tmp_path / "run"
    extra = []
    if route == "trainer.resume=FILE":
        crafted = make(tmp_path / "downloaded.pt", marker)
        extra = [f"trainer.resume={crafted}"]
    elif route == "trainer.resume=RUN_DIR":
        crafted = make(tmp_path / "other_run" / "checkpoints" / "last.pt", marker)
        extra = [f"trainer.resume={tmp_path / 'other_run'}"]
    else:
        crafted = make(run_dir / "checkpoints" / "last.pt", marker)
    message = _refused(_overrides(toy_root, *extra), run_dir, caplog)
    assert str(crafted) in message and "not a sam3_lora training checkpoint" in message
    assert "could run code" in message and "checkpoints/last.pt" in message
    assert not marker.exists()
    assert crafted.is_file()  # the user's file is left as it was


def test_crafted_best_checkpoint_is_refused_when_reloaded_for_the_final_score(toy_root, run_copy, tmp_path, caplog):
    marker = tmp_path / "marker"
    best = crafted_torch_file(run_copy / "checkpoints" / "best.pt", marker)
    message = _refused(_overrides(toy_root), run_copy, caplog)  # finished run: straight to the final score
    assert str(best) in message and "not a sam3_lora training checkpoint" in message
    assert not marker.exists()


def test_command_line_refuses_a_crafted_auto_resume_checkpoint_without_a_traceback(toy_root, tmp_path):
    marker, run_dir = tmp_path / "marker", tmp_path / "run"
    crafted = crafted_plain_pickle(run_dir / "checkpoints" / "last.pt", marker)
    res = _cli([*_overrides(toy_root), f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out[-3000:]
    assert "Traceback" not in out and str(crafted) in out and "not a sam3_lora training checkpoint" in out
    assert not marker.exists()


# ---------------------------------------------------------------- 9. other file kinds are named
def _base_weights(tmp_path, run_copy, tiny_model):
    return save_sam3_checkpoint(tiny_model, tmp_path / "sam3_tiny.pt")


def _adapter(tmp_path, run_copy, tiny_model):
    return run_copy / "adapter_best.safetensors"


def _random_bytes(tmp_path, run_copy, tiny_model):
    path = tmp_path / "random.pt"
    path.write_bytes(random.Random(0).randbytes(4096))
    return path


def _truncated(tmp_path, run_copy, tiny_model):
    path = tmp_path / "truncated.pt"
    data = (run_copy / "checkpoints" / "last.pt").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _empty(tmp_path, run_copy, tiny_model):
    path = tmp_path / "empty.pt"
    path.touch()
    return path


def _other_torch_file(tmp_path, run_copy, tiny_model):
    path = tmp_path / "weights.pt"
    torch.save({"weights": torch.ones(3), "epoch": 4}, path)
    return path


def _damaged_checkpoint(tmp_path, run_copy, tiny_model):
    """Tagged as a checkpoint, with the wrong types inside (tensors and plain values only)."""
    path = tmp_path / "damaged.pt"
    state = ckpt.load(run_copy / "checkpoints" / "last.pt")
    torch.save({**state, "trainable": [torch.ones(2)], "epoch": "1", "run": "x"}, path)
    return path


def _newer_format(tmp_path, run_copy, tiny_model):
    path = tmp_path / "newer.pt"
    torch.save({**ckpt.load(run_copy / "checkpoints" / "last.pt"), "format_version": ckpt.FORMAT_VERSION + 1}, path)
    return path


def _run_dir_without_checkpoint(tmp_path, run_copy, tiny_model):
    shutil.rmtree(run_copy / "checkpoints")
    return run_copy


WRONG_KINDS = {
    "base sam3.pt": (_base_weights, ["full SAM3 weights in sam3.pt's layout", "model.checkpoint_path"]),
    "adapter": (_adapter, ["is a sam3_lora adapter", "adapter= by evaluate", "trainer.resume={run}."]),
    "random bytes": (_random_bytes, ["unreadable as a PyTorch file"]),
    "truncated checkpoint": (_truncated, ["unreadable as a PyTorch file", "truncated"]),
    "empty file": (_empty, ["unreadable as a PyTorch file"]),
    "other torch file": (_other_torch_file, ["keys ['epoch', 'weights']", "not a training checkpoint"]),
    "damaged checkpoint": (_damaged_checkpoint, ["damaged", "malformed ['trainable', 'epoch', 'run']"]),
    "newer format": (_newer_format, ["this sam3_lora reads format", "the sam3_lora version that wrote it"]),
    "run dir without checkpoint": (_run_dir_without_checkpoint, ["no checkpoint at", "checkpoints/last.pt"]),
}


@pytest.mark.parametrize("make,expected", WRONG_KINDS.values(), ids=WRONG_KINDS.keys())
def test_resume_from_another_kind_of_file_says_what_it_is_and_what_is_expected(
    make, expected, toy_root, run_copy, tiny_model, tmp_path, caplog
):
    path = make(tmp_path, run_copy, tiny_model)
    before = path.read_bytes() if path.is_file() else None
    message = _refused(_overrides(toy_root, f"trainer.resume={path}"), tmp_path / "new_run", caplog)
    assert str(path) in message and "checkpoints/last.pt" in message, message
    for fragment in expected:
        assert fragment.format(run=run_copy) in message, message
    assert "KeyError" not in message and (before is None or path.read_bytes() == before)


# ---------------------------------------------------------------- 6. changed settings on resume
def test_resume_with_changed_settings_is_refused_listing_them_and_keeps_the_record(toy_root, run_copy, caplog):
    record = (run_copy / ".hydra" / "config.yaml").read_text()
    files = _bytes(run_copy)
    # train_in_process writes .hydra/config.yaml with the new settings first, as Hydra does.
    message = _refused(
        _overrides(toy_root, "trainer.max_epochs=6", "optimizer.lr=1e6", "lora.rank=4"), run_copy, caplog
    )
    assert str(run_copy / "checkpoints" / "last.pt") in message
    assert "  optimizer.lr: 0.003 -> 1000000.0" in message and "  lora.rank: 8 -> 4" in message
    assert "trainer.max_epochs: " not in message  # the run length may change
    assert "hydra.run.dir" in message and "drop the overrides" in message
    assert (run_copy / ".hydra" / "config.yaml").read_text() == record  # still what ran
    assert _bytes(run_copy) == files


def test_resume_with_a_longer_run_trains_on_with_the_schedule_of_the_new_length(
    toy_root, run_copy, monkeypatch, caplog
):
    lr_at_epoch = {}
    original = Trainer.train_epoch

    def record_lr(self):
        lr_at_epoch[self.epoch] = self.optimizer.param_groups[0]["lr"]
        return original(self)

    monkeypatch.setattr(Trainer, "train_epoch", record_lr)
    train_in_process(_overrides(toy_root, "trainer.max_epochs=2"), run_copy)

    def lr_at_step(total_steps, step):  # what the configured schedule gives at that step
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=3e-3)
        sched = warmup_cosine(opt, total_steps=total_steps)
        for _ in range(step):
            opt.step()
            sched.step()
        return opt.param_groups[0]["lr"]

    assert list(lr_at_epoch) == [1]  # epoch 1 came from the checkpoint
    assert lr_at_epoch[1] == pytest.approx(lr_at_step(4, 2)) and lr_at_step(4, 2) != pytest.approx(lr_at_step(2, 2))
    last = ckpt.load(run_copy / "checkpoints" / "last.pt")
    assert last["epoch"] == 2 and last["step"] == 4
    assert last["run"]["config"]["trainer"]["max_epochs"] == 2
    assert "max_epochs: 2" in (run_copy / ".hydra" / "config.yaml").read_text()


# ---------------------------------------------------------------- 8. disk full while saving
def test_disk_full_while_saving_names_the_run_and_space_and_loses_nothing(toy_root, run_copy, tmp_path):
    """A real write failure: the file-size limit makes torch.save raise its own RuntimeError."""
    files = _bytes(run_copy)
    limit = (len(files["adapter_last.safetensors"]) + len(files["checkpoints/last.pt"])) // 2
    assert len(files["adapter_last.safetensors"]) < limit < len(files["checkpoints/last.pt"])

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    args = [*_overrides(toy_root, "trainer.max_epochs=2"), f"hydra.run.dir={run_copy}"]
    res = _cli(args, cwd=tmp_path, preexec_fn=small_files)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out[-3000:]
    assert "Traceback" not in out and "checkpoint_dir" not in out
    assert "could not write" in out and f"run directory {run_copy}" in out and "hydra.run.dir=" in out
    assert "needs about" in out and "free" in out and "is intact" in out
    assert _bytes(run_copy) == files and _temp_files(run_copy) == []
    assert ckpt.load(run_copy / "checkpoints" / "last.pt")["epoch"] == 1


def test_temp_files_of_killed_saves_are_removed_and_nothing_else(toy_root, run_copy):
    stale = [
        run_copy / "checkpoints" / ".last.pt.4242_0a1b2c3d.tmp",
        run_copy / "checkpoints" / ".best.pt.ab_c1x9q.tmp",  # mkstemp's naming, from older versions
        run_copy / ".adapter_last.safetensors.4242_deadbeef.tmp",
    ]
    unrelated = [run_copy / ".notes.tmp", run_copy / "checkpoints" / "keep.tmp", run_copy / ".cache.bin.1.tmp"]
    for f in stale + unrelated:
        f.write_bytes(b"half a file")
    files = _bytes(run_copy)
    train_in_process(_overrides(toy_root), run_copy)  # the same finished run again: nothing to train
    assert not any(f.exists() for f in stale)
    assert all(f.exists() for f in unrelated)
    assert _bytes(run_copy) == files


# ---------------------------------------------------------------- 11. best score and best files agree
def test_failed_best_write_keeps_the_recorded_best_and_the_best_files_in_step(toy_root, run_copy, monkeypatch, caplog):
    last = run_copy / "checkpoints" / "last.pt"
    state = ckpt.load(last)
    state["best"] = -1.0  # below any AP: the next evaluation is an improvement
    atomic_save(state, last)
    files = _bytes(run_copy)
    real_save = torch.save

    def full_disk_for_best(obj, f, *args, **kwargs):
        if ".best.pt." in str(f):
            raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk_for_best)
    message = _refused(_overrides(toy_root, "trainer.max_epochs=2"), run_copy, caplog)
    assert str(run_copy / "checkpoints" / "best.pt") in message and "PytorchStreamWriter" in message
    assert _bytes(run_copy) == files  # neither best file moved ahead of the recorded score
    assert ckpt.load(last)["best"] == -1.0 and _temp_files(run_copy) == []

    monkeypatch.setattr(torch, "save", real_save)
    train_in_process(_overrides(toy_root, "trainer.max_epochs=2"), run_copy)
    last_state, best_state = ckpt.load(last), ckpt.load(run_copy / "checkpoints" / "best.pt")
    assert last_state["best"] == best_state["best"] == last_state["history"][-1]["bbox/AP"]
    adapter = load_file(run_copy / "adapter_best.safetensors")
    assert set(adapter) == set(best_state["trainable"])
    for name, value in adapter.items():
        torch.testing.assert_close(value, best_state["trainable"][name], rtol=0, atol=0)


# ---------------------------------------------------------------- 11. files follow the umask
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_checkpoints_and_adapters_follow_the_umask(umask, tiny_model, tmp_path):
    inject_lora(tiny_model, LoraConfig(rank=2, parts=["vision"]))
    previous = os.umask(umask)
    try:
        written = [
            atomic_save({"step": torch.tensor(1)}, tmp_path / "last.pt"),
            save_adapter(tiny_model, tmp_path / "adapter.safetensors", base_model="tiny"),
        ]
    finally:
        os.umask(previous)
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, (path, oct(path.stat().st_mode))
