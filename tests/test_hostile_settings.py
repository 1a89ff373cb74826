"""Bad settings stop before anything is built, and divergence stops cleanly, naming the cause."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_train, tiny_run_overrides

from sam3_lora import check
from sam3_lora.core.errors import UserError
from sam3_lora.pipeline.settings import ConfigError, check_settings
from sam3_lora.train import run
from sam3_lora.training import checkpoint as ckpt
from sam3_lora.training.trainer import DivergedError

ROOT = Path(__file__).resolve().parent.parent

BAD_SETTINGS = {
    "trainer.batch_size=0": "trainer.batch_size=0: an integer >= 1",
    "trainer.grad_accum=-2": "trainer.grad_accum=-2: an integer >= 1",
    "trainer.max_steps=0": "trainer.max_steps=0: an integer >= 1 or null",
    "trainer.clip_grad=-1": "trainer.clip_grad=-1: a positive max gradient norm",
    "trainer.amp=fp8": "trainer.amp='fp8': one of auto, bf16, fp16, off",
    "trainer.best_metric=segm/mAP": "trainer.best_metric='segm/mAP': one of bbox/AP, bbox/AP50",
    "trainer.device=tpu": "trainer.device='tpu': auto, cpu, cuda or cuda:N",
    "optimizer.lr=-1": "optimizer.lr=-1: a positive learning rate",
    "optimizer.lr=nan": "optimizer.lr=nan: a positive learning rate",
    "optimizer.weight_decay=-0.1": "optimizer.weight_decay=-0.1: a number >= 0",
    "scheduler.warmup_ratio=1.5": "scheduler.warmup_ratio=1.5: a fraction of the training steps in [0, 1]",
    "trainer.base_dtype=fp8": "trainer.base_dtype='fp8': null (fp32) or bf16",
    "final_eval.split=dev": "final_eval.split='dev': one of train, valid, test",
    "lora.rank=0": "lora.rank=0: a positive integer",
    "lora.dropout=1.0": "lora.dropout=1: in [0, 1)",
    "lora.targets=[qproj]": "unknown LoRA target 'qproj'; valid targets: q_proj",
    "lora.parts=[txt]": "unknown LoRA part 'txt'; valid parts: vision, text",
    "+dataset.augment.rotate=30": "dataset.augment.rotate: unknown key",
    "~dataset.max_ann_per_img": "does not support deletion (key dataset.max_ann_per_img)",
    "dataset._target_=collections.OrderedDict": "built a OrderedDict, not a sam3_lora.data.config.DatasetConfig",
}


@pytest.mark.parametrize("override", BAD_SETTINGS)
def test_train_and_check_refuse_each_bad_setting_alike(override, capsys, tmp_path, monkeypatch):
    """Each message names the key, the value and what is valid; train and check refuse the same settings."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        run(compose_train(["model=sam3_tiny", override]), tmp_path / "run")
    assert BAD_SETTINGS[override] in str(err.value)
    assert not (tmp_path / "run").exists()  # refused before anything was made
    assert check.main(["model=sam3_tiny", override]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] settings: invalid settings" in out and BAD_SETTINGS[override] in out


def test_every_problem_is_reported_at_once():
    cfg = compose_train(["trainer.batch_size=0", "optimizer.lr=-1", "trainer.best_metric=nope", "lora.rank=0"])
    with pytest.raises(ConfigError) as err:
        check_settings(cfg)
    assert [line.split("=")[0] for line in str(err.value).splitlines()[1:]] == [
        "- trainer.batch_size",
        "- trainer.best_metric",
        "- optimizer.lr",
        "- lora.rank",
    ]


@pytest.mark.parametrize(
    "overrides",
    [[], ["experiment=quickstart"], ["experiment=rank_sweep"], ["lora=none"], ["lora=full", "optimizer=sgd"]],
    ids=["defaults", "quickstart", "rank_sweep", "lora=none", "full+sgd"],
)
def test_shipped_configs_pass(overrides):
    check_settings(compose_train(overrides))


def _train_cli(tmp_path, *args):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "sam3_lora.train", *args, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_bad_settings_stop_the_command_before_any_data_or_model(tmp_path):
    res = _train_cli(
        tmp_path,
        "experiment=quickstart",
        f"dataset.root={tmp_path / 'toy'}",
        "trainer.batch_size=0",
        "optimizer.lr=-1",
        "lora.alpha=0",
    )
    out = res.stdout + res.stderr
    assert res.returncode == 2, out[-3000:]
    assert "Traceback" not in out
    for key in ("trainer.batch_size=0", "optimizer.lr=-1", "lora.alpha=0: positive"):
        assert key in out
    assert not (tmp_path / "toy").exists()  # the toy data was never generated, the base never built
    assert "pretraining" not in out


def test_divergence_stops_cleanly_naming_the_learning_rate(toy_root, tmp_path):
    with pytest.raises(DivergedError, match=r"diverged at step 1 .*optimizer\.lr=1000000\.0.*last\.pt holds"):
        run(compose_train(tiny_run_overrides(toy_root, "optimizer.lr=1e6", "trainer.max_epochs=4")), tmp_path)
    assert issubclass(DivergedError, UserError)  # entry points report it without a traceback, exit code 2
    state = ckpt.load(tmp_path / ckpt.CHECKPOINT_DIR / ckpt.LAST)
    assert state["step"] == 1  # saved before the divergence showed, never after
    assert all(torch.isfinite(t).all() for t in state["trainable"].values())


def test_divergence_exits_2_without_traceback(toy_root, tmp_path):
    res = _train_cli(tmp_path, *tiny_run_overrides(toy_root, "optimizer.lr=1e6", "trainer.max_epochs=3"))
    out = res.stdout + res.stderr
    assert res.returncode == 2, out[-3000:]
    assert "Traceback" not in out and "matrix contains invalid numeric entries" not in out
    assert "training diverged" in out and "optimizer.lr=1000000.0" in out


def test_an_unresolvable_interpolation_names_its_key(toy_root):
    cfg = compose_train(["model=sam3_tiny", "dataset=toy", "dataset.generate=null"])  # root: ${dataset.generate.x}
    with pytest.raises(ConfigError, match=r"dataset.root: cannot be resolved .*set dataset.root= explicitly"):
        check_settings(cfg)
