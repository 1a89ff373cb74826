"""Every config composes and instantiates; the CLI behaves as Hydra users expect."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from sam3_lora.lora import LoraConfig
from sam3_lora.train import CONF_DIR

GROUPS = {g: sorted(p.stem for p in (Path(CONF_DIR) / g).glob("*.yaml")) for g in ("model", "lora", "experiment")}
ROOT = Path(CONF_DIR).parent


def _compose(overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_groups_have_the_expected_options():
    assert GROUPS["model"] == ["sam3", "sam3_medium", "sam3_tiny"]
    assert GROUPS["lora"] == ["balanced", "full", "minimal"]


@pytest.mark.parametrize("lora", GROUPS["lora"])
def test_every_lora_preset_instantiates(lora):
    cfg = _compose([f"lora={lora}"])
    assert isinstance(instantiate(cfg.lora, _convert_="all"), LoraConfig)


@pytest.mark.parametrize("model", [m for m in GROUPS["model"] if m != "sam3"])
def test_small_models_instantiate(model):
    cfg = _compose([f"model={model}"])
    assert sum(p.numel() for p in instantiate(cfg.model).parameters()) > 1e6


@pytest.mark.parametrize("experiment", GROUPS["experiment"])
def test_every_experiment_composes(experiment):
    cfg = _compose([f"experiment={experiment}"])
    assert cfg.model.name and cfg.lora.rank > 0


def _cli(*args, cwd=ROOT):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    env.pop("SAM3_CHECKPOINT", None)
    return subprocess.run(
        [sys.executable, "-m", "sam3_lora.train", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_cfg_job_prints_the_composed_config():
    res = _cli("--cfg", "job", "lora=balanced")
    assert res.returncode == 0, res.stderr
    assert "rank: 8" in res.stdout and "alpha: 16.0" in res.stdout and "name: sam3" in res.stdout


def test_quickstart_writes_an_adapter_into_the_run_dir(tmp_path):
    res = _cli("experiment=quickstart", f"hydra.run.dir={tmp_path}")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "adapter.safetensors").is_file()
    assert (tmp_path / ".hydra" / "config.yaml").is_file()
    assert "trainable parameters by part" in res.stdout + res.stderr


def test_missing_checkpoint_stops_with_instructions(tmp_path):
    res = _cli("lora=balanced", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert res.returncode == 2
    out = res.stdout + res.stderr
    assert "SAM3 checkpoint not found" in out and "model.checkpoint_path" in out
    assert "Traceback" not in out


def test_bad_lora_option_lists_valid_choices(tmp_path):
    res = _cli("experiment=quickstart", "lora.targets=[q_proj,query]", f"hydra.run.dir={tmp_path}")
    assert res.returncode == 2
    assert "unknown LoRA target 'query'; valid targets: q_proj" in res.stdout + res.stderr
