"""Every config composes and instantiates; the CLI behaves as Hydra users expect."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate

from sam3_lora.core.conf import CONF_DIR
from sam3_lora.data.config import DatasetConfig, Split
from sam3_lora.lora import LoraConfig
from sam3_lora.pipeline.settings import compose
from sam3_lora.training.distill import DistillConfig
from sam3_lora.training.keeping import KeepingMethod
from sam3_lora.tuning import FullFineTuning, LoraTuning, TuningMethod

GROUPS = {
    g: sorted(p.stem for p in (Path(CONF_DIR) / g).glob("*.yaml"))
    for g in (
        "model",
        "lora",
        "dataset",
        "optimizer",
        "scheduler",
        "trainer",
        "logger",
        "launcher",
        "experiment",
        "debug",
        "preserve",
        "recipe",
        "retention",
    )
}
ROOT = Path(CONF_DIR).parent


def _compose(overrides):
    return compose("train", overrides)


def test_groups_have_the_expected_options():
    assert GROUPS["model"] == ["sam3", "sam3_medium", "sam3_tiny", "sam3_tiny_toy"]
    assert GROUPS["lora"] == ["balanced", "full", "heads", "minimal", "none"]
    assert GROUPS["optimizer"] == ["adamw", "meta_transfer", "sgd"]
    assert GROUPS["scheduler"] == ["constant", "inverse_sqrt", "step", "warmup_cosine"]
    assert GROUPS["logger"] == ["all", "none", "tensorboard", "wandb"]
    assert GROUPS["preserve"] == ["coco_anchors", "distill", "none", "toy_anchors", "toy_target_anchors"]
    assert GROUPS["retention"] == ["coco", "coco_val2017", "none", "toy_base"]


@pytest.mark.parametrize("lora", GROUPS["lora"])
def test_every_lora_option_builds_its_tuning_method(lora):
    built = instantiate(_compose([f"lora={lora}"]).lora)
    assert isinstance(built, TuningMethod)
    if lora == "none":
        assert isinstance(built, FullFineTuning) and built.record() == {"label": "finetuned", "config": None}
    else:
        assert isinstance(built, LoraTuning) and isinstance(built.config, LoraConfig)
        assert built.record()["config"]["rank"] == _compose([f"lora={lora}"]).lora.rank


INSTANTIATED_GROUPS = ("model", "lora", "dataset", "optimizer", "scheduler", "trainer", "logger", "preserve")


@pytest.mark.parametrize("group", INSTANTIATED_GROUPS)
def test_every_option_of_an_instantiated_group_names_its_target(group):
    # preserve=none (no keeping method) builds nothing; every other option's YAML shows its _target_
    for option in GROUPS[group]:
        node = _compose([f"{group}={option}"])[group]
        assert (not node and option == "none" and group == "preserve") or "_target_" in node, (group, option)
        text = (Path(CONF_DIR) / group / f"{option}.yaml").read_text()
        inherits = any(line.strip().startswith("- /" + group) or line.strip() == "- coco" for line in text.splitlines())
        assert "_target_:" in text or inherits or not node, f"conf/{group}/{option}.yaml shows no _target_"


@pytest.mark.parametrize("preserve", [p for p in GROUPS["preserve"] if p != "none"])
def test_every_preserve_option_instantiates_typed_settings(preserve):
    given = {
        "distill": ["preserve.images=/data/anchors", "preserve.vocabulary=[dog, car]"],
        "coco_anchors": ["retention=coco_val2017", "retention.root=/data/coco"],  # its images are the retention's
    }.get(preserve, [])
    built = instantiate(_compose([f"preserve={preserve}", *given]).preserve)
    assert isinstance(built, DistillConfig) and isinstance(built, KeepingMethod)
    assert built.weight > 0 and built.vocabulary
    assert (built.generate is not None) == (preserve == "toy_anchors")


# dataset=benchmark reads a prepared benchmark's folders through the run's benchmark section
BENCHMARK_RUN = "benchmark={name:odinw13,prepared:/data,dataset:x,shots:null,train_split:train}"


@pytest.mark.parametrize("dataset", GROUPS["dataset"])
def test_every_dataset_instantiates_typed_settings(dataset):
    where = [BENCHMARK_RUN] if dataset == "benchmark" else ["dataset.root=/data/x"]
    cfg = _compose([f"dataset={dataset}", *where])
    built = instantiate(cfg.dataset)
    assert isinstance(built, DatasetConfig) and isinstance(built.train, Split)
    assert built.train.ann_file == "/data/x/train/_annotations.coco.json"
    assert (built.generate is not None) == (dataset == "toy")
    if built.generate is not None:
        assert isinstance(built.generate.splits, dict) and built.generate.splits["train"] > 0


@pytest.mark.parametrize("optimizer", GROUPS["optimizer"])
@pytest.mark.parametrize("scheduler", GROUPS["scheduler"])
def test_every_optimizer_and_scheduler_instantiates_and_steps(optimizer, scheduler):
    import torch

    cfg = _compose([f"optimizer={optimizer}", f"scheduler={scheduler}"])
    param = torch.nn.Parameter(torch.ones(3))
    opt = instantiate(cfg.optimizer)([("w", param)])  # the named trainable parameters
    sched = instantiate(cfg.scheduler)(opt, total_steps=100)
    lrs = []
    for _ in range(100):
        param.grad = torch.ones(3)
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert all(lr > 0 for lr in lrs) and lrs[-1] <= cfg.optimizer.lr
    if scheduler != "constant":
        assert lrs[-1] < cfg.optimizer.lr / 5


@pytest.mark.parametrize("logger", GROUPS["logger"])
def test_every_logger_builds(logger, tmp_path):
    cfg = _compose([f"logger={logger}"])
    loggers = instantiate(cfg.logger, _convert_="all")(run_dir=tmp_path, config={"a": 1}, run_name="run", is_main=True)
    assert len(loggers.backends) == {"none": 0, "tensorboard": 1, "wandb": 1, "all": 2}[logger]
    loggers.log_metrics({"x": 1.0}, 1)
    loggers.finish()


@pytest.mark.parametrize("dataset", GROUPS["dataset"])
@pytest.mark.parametrize("trainer", GROUPS["trainer"])
@pytest.mark.parametrize("launcher", GROUPS["launcher"])
def test_data_trainer_launcher_options_compose(dataset, trainer, launcher):
    from sam3_lora.training.config import TrainerConfig

    where = [BENCHMARK_RUN] if dataset == "benchmark" else []
    cfg = _compose([f"dataset={dataset}", f"trainer={trainer}", f"launcher={launcher}", *where])
    assert cfg.dataset.train.ann_file.endswith("train/_annotations.coco.json")
    assert isinstance(instantiate(cfg.trainer), TrainerConfig)


@pytest.mark.parametrize("debug", GROUPS["debug"])
def test_every_debug_overlay_composes(debug):
    assert _compose([f"debug={debug}"]).trainer.max_steps


def test_toy_base_model_option_instantiates(tmp_path):
    """model=sam3_tiny_toy trains (here: 2 steps) and caches its base, then reuses it."""
    cfg = _compose(["model=sam3_tiny_toy", f"model.cache_dir={tmp_path}", "model.steps=2", "model.train_images=4"])
    import torch

    torch.manual_seed(7)
    model = instantiate(cfg.model)
    after_pretraining = torch.rand(3)
    cached = list(tmp_path.glob("toy_base_*.pt"))
    assert len(cached) == 1 and model.image_size == 112
    mtime = cached[0].stat().st_mtime
    torch.manual_seed(7)
    instantiate(cfg.model)
    assert cached[0].stat().st_mtime == mtime  # reused, not retrained
    # Pretraining left the random streams as a cache hit does: runs train alike either way.
    assert torch.equal(torch.rand(3), after_pretraining)


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


def test_quickstart_end_to_end_scaled_down(tmp_path):
    """The README's main job with every stage shortened: pretrain base, score it, LoRA, score, table."""
    run_dir = tmp_path / "run"
    res = _cli(
        "experiment=quickstart",
        f"hydra.run.dir={run_dir}",
        f"model.cache_dir={tmp_path / 'cache'}",
        "model.steps=4",
        "model.train_images=4",
        f"dataset.root={tmp_path / 'data'}",
        "dataset.generate.splits={train: 8, valid: 4, test: 4}",
        f"retention.root={tmp_path / 'source'}",
        "retention.generate.splits={train: 0, valid: 3, test: 4}",
        "trainer.max_epochs=1",
        "trainer.num_workers=0",
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    for name in (
        "adapter_best.safetensors",
        "adapter_last.safetensors",
        "training.log",
        "results.json",
        ".hydra/config.yaml",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    ):
        assert (run_dir / name).is_file(), name
    assert "trainable parameters by part" in out
    assert "frozen base" in out and "LoRA (best)" in out and str(run_dir) in out
    log = (run_dir / "training.log").read_text()
    assert "held-out 'test' split" in log and "retention: 'toy_base' test split" in log
    results = json.loads((run_dir / "results.json").read_text())
    assert results["retention"]["dataset"] == "toy_base" and "segm/cgF1" in results["retention"]["change"]


def test_missing_checkpoint_stops_with_instructions(tmp_path):
    res = _cli("lora=balanced", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert res.returncode == 2
    out = res.stdout + res.stderr
    assert "SAM3 checkpoint not found" in out and "model.checkpoint_path" in out
    assert "No training data at 'data/train/_annotations.coco.json'" in out and "dataset.root=" in out
    assert "Traceback" not in out


def test_bad_lora_option_lists_valid_choices(tmp_path):
    res = _cli("experiment=quickstart", "lora.targets=[q_proj,query]", f"hydra.run.dir={tmp_path}")
    assert res.returncode == 2
    assert "unknown LoRA target 'query'; valid targets: q_proj" in res.stdout + res.stderr


def test_help_lists_every_group_and_its_options():
    res = _cli("--help")
    assert res.returncode == 0
    for group, options in GROUPS.items():
        assert f"{group}: {', '.join(options)}" in res.stdout, group


def test_trainer_defaults_are_written_once():
    from sam3_lora.training.config import TrainerConfig

    composed = instantiate(_compose([]).trainer)
    assert TrainerConfig() == composed
    assert TrainerConfig(batch_size=7).batch_size == 7


SCHEMA_GROUPS = ("model", "lora", "dataset", "retention", "optimizer", "scheduler", "trainer", "logger")


@pytest.mark.parametrize("group", SCHEMA_GROUPS)
def test_every_yaml_key_is_a_field_of_its_schema(group):
    """YAML holds presets only: each option names its schema, and each key it sets is a field there
    (composing refuses an undeclared key; this says which)."""
    import dataclasses

    import yaml
    from omegaconf import OmegaConf

    for path in sorted((Path(CONF_DIR) / group).glob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        if not raw or (group, path.stem) == ("lora", "none"):
            continue  # lora=none: full fine-tuning, nothing to type
        overrides = [f"{group}={path.stem}"] + (["retention.root=/x"] if group == "retention" else [])
        node = _compose(overrides)[group]
        schema = OmegaConf.get_type(node)
        assert dataclasses.is_dataclass(schema), f"{path}: no schema in its defaults list"
        fields = {f.name for f in dataclasses.fields(schema)}
        undeclared = [key for key in raw if key != "defaults" and key not in fields]
        assert not undeclared, f"{path}: {undeclared} are no fields of {schema.__name__}"


def test_a_yaml_key_without_a_schema_field_is_refused(tmp_path):
    import shutil

    from sam3_lora.pipeline.settings import ConfigError, compose

    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "trainer" / "typo.yaml").write_text("defaults:\n  - /trainer_schema@_here_\n  - _self_\nmax_epoch: 3\n")
    from unittest import mock

    with mock.patch("sam3_lora.pipeline.settings.CONF_DIR", str(conf)), pytest.raises(ConfigError, match="max_epoch"):
        compose("train", ["trainer=typo"])


def test_every_setting_is_documented():
    from sam3_lora.core.schema import documented
    from sam3_lora.pipeline.settings import SCHEMAS

    undocumented = {name: documented(schema) for name, schema in SCHEMAS.items() if documented(schema)}
    assert not undocumented, undocumented


def test_sweep_points_are_not_named_by_paths_or_machine_settings():
    from sam3_lora.pipeline.settings import keys_not_in_run_names

    keys = keys_not_in_run_names()
    expected = {"experiment", "launcher", "logger", "trainer.resume", "trainer.num_workers", "dataset.root"}
    expected |= {"dataset.generate", "model.checkpoint_path", "model.cache_dir", "retention.root"}
    expected |= {f"dataset.{s}.{f}" for s in ("train", "valid", "test") for f in ("ann_file", "img_folder")}
    assert expected <= set(keys), expected - set(keys)
    assert not {"lora.rank", "optimizer.lr", "recipe", "seed", "trainer.max_epochs"} & set(keys)
