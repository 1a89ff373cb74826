"""Run directories, base checkpoints and adapters from someone else: nothing they hold is executed,
an adapter loads only onto the base it was trained on, and the use commands say what they skipped
or refused. Every crafted file would leave a marker behind if anything ran it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import compose_command, tiny_run_overrides, train_in_process
from hostile import crafted_plain_pickle, crafted_run_config, crafted_torch_file
from safetensors import safe_open
from safetensors.torch import save_file
from synthetic import randomize_lora

from sam3_lora import check
from sam3_lora import evaluate as evaluate_cmd
from sam3_lora import export as export_cmd
from sam3_lora import predict as predict_cmd
from sam3_lora.core.errors import find_user_error
from sam3_lora.lora import AdapterError, LoraConfig, inject_lora, load_adapter, read_adapter, save_adapter
from sam3_lora.lora.inject import base_weights_fingerprint
from sam3_lora.models import BaseCheckpointError, build_model
from sam3_lora.models.sam3_layout import save_sam3_checkpoint
from sam3_lora.pipeline.settings import ConfigError, model_builders
from sam3_lora.pipeline.tuned import RunDirError, load_tuned
from sam3_lora.predict import PredictError

COMMANDS = {"evaluate": evaluate_cmd.evaluate, "predict": predict_cmd.run, "export": export_cmd.export}


@pytest.fixture(scope="module")
def run(toy_root, tmp_path_factory):
    """A finished one-epoch LoRA run of the tiny model (seed 0), with a modules_to_save head."""
    run_dir = tmp_path_factory.mktemp("run")
    train_in_process(
        tiny_run_overrides(toy_root, "trainer.max_epochs=1", "lora.modules_to_save=[dot_prod_scoring]"), run_dir
    )
    return run_dir


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "EXECUTED"
    yield path
    assert not path.exists(), "a crafted file was executed"


def _command_values(name, toy_root, tmp_path, **values):
    """What each command needs besides the model source, writing only under tmp_path."""
    needs = {
        "evaluate": {"num_workers": 0, "output": tmp_path / "eval"},
        "predict": {"images": toy_root / "test", "output": tmp_path / "pred"},
        "export": {"output": tmp_path / "merged.pt"},
    }
    return {**needs[name], **values}


def _user_error(fn, cfg):
    """The UserError ``fn(cfg)`` stops with, as the command line would report it (exit code 2)."""
    with pytest.raises(Exception) as info:  # Hydra wraps errors raised while building the model
        fn(cfg)
    cause = find_user_error(info.value)
    assert cause is not None, f"not a clean user error: {info.value!r}"
    return cause


def _cli(module, *args):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    res = subprocess.run(
        [sys.executable, "-m", f"sam3_lora.{module}", *map(str, args)], capture_output=True, text=True, env=env
    )
    return res.returncode, res.stdout + res.stderr


# --------------------------------------------------------------- run directory configs (item 2)


def _hostile_models(marker):
    """Model sections that would run code; shutil.copyfile (the issue's reproduction) passes Hydra's own
    blocklist, so without sam3_lora's allow-list it would create the marker."""
    payload = marker.with_name("payload")
    payload.write_text("copied by a crafted config")
    copy = {"_target_": "shutil.copyfile", "_args_": [str(payload), str(marker)]}
    return {
        "shutil.copyfile": (copy, "model._target_"),
        "nested in a model kwarg": (
            {"_target_": "sam3_lora.models.build_model", "name": "tiny", "overrides": copy},
            "model.overrides._target_",
        ),
        "inside a list": (
            {"_target_": "sam3_lora.models.build_model", "_args_": [copy], "name": "tiny"},
            "model._args_[0]._target_",
        ),
        "look-alike": ({"_target_": "sam3_lora.models.x; os.system", "name": "tiny"}, "model._target_"),
        "builtins.eval": (
            {"_target_": "builtins.eval", "_args_": [f"__import__('os').system('touch {marker}')"]},
            "model._target_",
        ),
        # an interpolation is checked as it resolves, not as written
        "interpolated": ({"_target_": "${evil}", "_args_": copy["_args_"]}, "model._target_"),
    }


def _crafted_run(run, tmp_path, model):
    """A copy of a real run directory whose config's model section is ``model``."""
    crafted = tmp_path / "crafted_run"
    shutil.copytree(run, crafted, ignore=shutil.ignore_patterns("checkpoints", "tb", "data"))
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    config.update(model=model, evil="shutil.copyfile")
    (crafted / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    return crafted


@pytest.mark.parametrize("command", COMMANDS)
def test_crafted_run_config_is_refused_before_anything_is_built(command, run, toy_root, tmp_path, marker):
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    crafted = tmp_path / "crafted_run"
    crafted.mkdir()
    shutil.copy(run / "adapter_last.safetensors", crafted)
    path = crafted_run_config(crafted, marker, config)
    cfg = compose_command(command, run_dir=crafted, **_command_values(command, toy_root, tmp_path))
    error = _user_error(COMMANDS[command], cfg)
    assert isinstance(error, RunDirError)
    message = str(error)
    assert str(path) in message and "model._target_='os.system'" in message
    assert all(target in message for target in model_builders()) and "restore" in message
    assert not any((tmp_path / out).exists() for out in ("eval", "pred", "merged.pt"))


@pytest.mark.parametrize(
    "variant",
    ["shutil.copyfile", "nested in a model kwarg", "inside a list", "look-alike", "builtins.eval", "interpolated"],
)
def test_every_target_in_the_model_section_is_checked(variant, run, toy_root, tmp_path, marker):
    model, key = _hostile_models(marker)[variant]
    crafted = _crafted_run(run, tmp_path, model)
    error = _user_error(evaluate_cmd.evaluate, compose_command("evaluate", run_dir=crafted, num_workers=0))
    assert isinstance(error, RunDirError)
    assert str(crafted / ".hydra" / "config.yaml") in str(error) and f"refused {key}=" in str(error)
    assert "allowed: sam3_lora.models.build_model" in str(error)


def test_crafted_run_config_exits_cleanly_from_the_command_line(run, tmp_path, marker):
    crafted = tmp_path / "crafted_run"
    crafted.mkdir()
    shutil.copy(run / "adapter_last.safetensors", crafted)
    path = crafted_run_config(crafted, marker, yaml.safe_load((run / ".hydra" / "config.yaml").read_text()))
    code, out = _cli("export", f"run_dir={crafted}", f"output={tmp_path / 'merged.pt'}")
    assert code == 2 and "Traceback" not in out, out[-2000:]
    assert str(path) in out and "'os.system'" in out and "allowed:" in out
    assert not (tmp_path / "merged.pt").exists()


def test_the_runs_own_config_still_builds(run):
    # the same run directory, untouched: its builder is on the allow-list and its adapter loads
    tuned = load_tuned(compose_command("evaluate", run_dir=run))
    assert tuned.info is not None and tuned.adapter.name == "adapter_best.safetensors"


def test_the_dataset_section_is_read_as_data(run, tmp_path, marker):
    # a dataset section naming a target that would run code: read field by field, never imported
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    payload = marker.with_name("payload")
    payload.write_text("copied by a crafted config")
    config["dataset"]["_target_"] = "shutil.copyfile"
    config["dataset"]["_args_"] = [str(payload), str(marker)]
    crafted = _crafted_run(run, tmp_path, config["model"])
    (crafted / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    tuned = load_tuned(compose_command("evaluate", run_dir=crafted))
    assert tuned.dataset.train.exists() and tuned.dataset.train.ann_file.endswith("_annotations.coco.json")
    assert not marker.exists()


def test_an_unknown_dataset_key_in_a_run_names_file_and_key(run, tmp_path):
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    config["dataset"]["augment"]["rotate"] = 30
    crafted = _crafted_run(run, tmp_path, config["model"])
    (crafted / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    error = _user_error(evaluate_cmd.evaluate, compose_command("evaluate", run_dir=crafted))
    assert isinstance(error, RunDirError)
    assert str(crafted / ".hydra" / "config.yaml") in str(error) and "dataset.augment.rotate" in str(error)


def test_unreadable_run_config_is_a_clean_error(run, tmp_path):
    crafted = _crafted_run(run, tmp_path, {"_target_": "sam3_lora.models.build_model", "name": "tiny"})
    (crafted / ".hydra" / "config.yaml").write_text("model: [unclosed\n")
    error = _user_error(evaluate_cmd.evaluate, compose_command("evaluate", run_dir=crafted))
    assert isinstance(error, RunDirError) and "not a readable run config" in str(error)


# --------------------------------------------------- base checkpoints and adapters that are pickles


@pytest.mark.parametrize("kind", ["torch zip", "bare pickle", "safetensors name"])
def test_crafted_base_checkpoint_is_refused(kind, tmp_path, marker):
    if kind == "torch zip":
        crafted = crafted_torch_file(tmp_path / "sam3.pt", marker, layout="sam3")
    elif kind == "bare pickle":
        crafted = crafted_plain_pickle(tmp_path / "sam3.pt", marker)
    else:
        crafted = crafted_plain_pickle(tmp_path / "sam3.safetensors", marker)
    cfg = compose_command("evaluate", model="sam3_tiny", base=True, **{"+model.checkpoint_path": crafted})
    error = _user_error(evaluate_cmd.evaluate, cfg)
    assert isinstance(error, BaseCheckpointError)
    assert str(crafted) in str(error) and "model.checkpoint_path expects the base sam3.pt" in str(error)


def _crafted_adapter(kind, run, tmp_path, marker):
    if kind == "torch zip":
        return crafted_torch_file(tmp_path / "adapter.safetensors", marker)
    if kind == "bare pickle":
        return crafted_plain_pickle(tmp_path / "adapter.pt", marker)
    crafted = _crafted_run(run, tmp_path, yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["model"])
    crafted_torch_file(crafted / "adapter_best.safetensors", marker)  # the run directory's own adapter
    return crafted / "adapter_best.safetensors"


@pytest.mark.parametrize("command", ["evaluate", "export"])
@pytest.mark.parametrize("kind", ["torch zip", "bare pickle", "in a run directory"])
def test_crafted_adapter_is_refused(command, kind, run, toy_root, tmp_path, marker):
    crafted = _crafted_adapter(kind, run, tmp_path, marker)
    source = {"run_dir": crafted.parent} if kind == "in a run directory" else {"model": "sam3_tiny", "adapter": crafted}
    cfg = compose_command(command, **source, **_command_values(command, toy_root, tmp_path))
    error = _user_error(COMMANDS[command], cfg)
    assert isinstance(error, AdapterError) and str(crafted) in str(error)
    assert "not a readable safetensors adapter" in str(error)
    assert not (tmp_path / "merged.pt").exists() and not (tmp_path / "eval").exists()


# ----------------------------------------------------- adapters on the wrong base (item 10)


def test_architecture_mismatch_names_the_model_option(tiny_model, tmp_path):
    inject_lora(tiny_model, LoraConfig(rank=2, alpha=4, targets=["q_proj"], parts=["decoder"]))
    path = save_adapter(tiny_model, tmp_path / "a.safetensors", base_model="tiny_toy")
    with pytest.raises(AdapterError, match=r"trained on base model 'tiny_toy'") as info:
        load_adapter(build_model("medium"), path)
    assert "(model=sam3_tiny_toy)" in str(info.value) and "model=tiny_toy" not in str(info.value)


def test_weights_fingerprint_follows_the_base_weights_only(tiny_model, tiny_base_state):
    cfg = LoraConfig(
        rank=4, alpha=8, targets=["all"], parts=["vision", "decoder"], modules_to_save=["dot_prod_scoring"]
    )
    before = base_weights_fingerprint(tiny_model, cfg.modules_to_save)
    report = inject_lora(tiny_model, cfg)
    assert report.base_weights_fingerprint == before
    randomize_lora(tiny_model, seed=3)  # training touches LoRA and modules_to_save, not the base
    with torch.no_grad():
        tiny_model.dot_prod_scoring.hs_proj.weight.add_(1.0)
    assert base_weights_fingerprint(tiny_model, cfg.modules_to_save) == before
    for name in ("backbone.vision_backbone.trunk.blocks.0.norm1.weight", "transformer.decoder.query_embed.weight"):
        other = build_model("tiny")
        other.load_state_dict(tiny_base_state)
        with torch.no_grad():  # a small tensor (read whole) and a large one (sampled), changed slightly
            other.get_parameter(name).mul_(1.001)
        assert base_weights_fingerprint(other, cfg.modules_to_save) != before, name


def _adapter_meta(path):
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def test_adapter_on_other_base_weights_is_refused_unless_allowed(run, tmp_path, caplog):
    adapter = run / "adapter_last.safetensors"
    trained_on = _adapter_meta(adapter)["base_weights_fingerprint"]
    torch.manual_seed(1)  # model=sam3_tiny initialises randomly: not the seed-0 base of the run
    error = _user_error(
        export_cmd.export, compose_command("export", model="sam3_tiny", adapter=adapter, output=tmp_path / "m.pt")
    )
    assert isinstance(error, AdapterError)
    message = str(error)
    assert str(adapter) in message and f"trained on base weights {trained_on} (model 'tiny')" in message
    assert "this model's base weights are " in message and "model=sam3_tiny" in message
    assert "allow_base_mismatch=true" in message
    assert not (tmp_path / "m.pt").exists()

    torch.manual_seed(1)
    out = export_cmd.export(
        compose_command(
            "export", model="sam3_tiny", adapter=adapter, output=tmp_path / "m.pt", allow_base_mismatch=True
        )
    )
    assert "loaded anyway (allow_base_mismatch)" in caplog.text
    provenance = torch.load(out, weights_only=True)["sam3_lora"]
    assert provenance["adapter_base_weights_fingerprint"] == trained_on
    assert provenance["base_weights_fingerprint"] not in (None, trained_on)


def test_adapter_on_other_base_weights_exits_cleanly_from_the_command_line(run, tmp_path):
    code, out = _cli("evaluate", "model=sam3_tiny", f"adapter={run / 'adapter_last.safetensors'}", "num_workers=0")
    assert code == 2 and "Traceback" not in out, out[-2000:]
    assert "adapter_last.safetensors was trained on base weights" in out and "allow_base_mismatch=true" in out


def test_adapter_onto_its_own_merged_export_is_refused(run, tmp_path):
    merged = export_cmd.export(compose_command("export", run_dir=run, output=tmp_path / "merged.pt"))
    with pytest.raises(AdapterError, match="already merged into"):  # the update would be applied twice
        load_adapter(build_model("tiny", checkpoint_path=str(merged)), run / "adapter_best.safetensors")


def test_adapter_without_weights_fingerprint_loads_with_a_warning(run, tmp_path, caplog):
    adapter = run / "adapter_best.safetensors"
    meta = _adapter_meta(adapter)
    del meta["base_weights_fingerprint"]
    older = tmp_path / "older.safetensors"
    with safe_open(str(adapter), framework="pt") as f:
        save_file({k: f.get_tensor(k) for k in f.keys()}, str(older), metadata=meta)
    assert read_adapter(older)[0].base_weights_fingerprint is None
    tuned = load_tuned(compose_command("evaluate", run_dir=run, adapter=older))
    assert tuned.info.config.rank == read_adapter(adapter)[0].config.rank
    assert "older.safetensors records no base weights fingerprint" in caplog.text


# --------------------------------------------------------------------- predict inputs (item 11)


def test_predict_lists_what_it_skipped(run, toy_root, tmp_path, caplog):
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    for name in ("test_0000.png", "test_0001.png"):
        shutil.copy(toy_root / "test" / name, folder)
    (folder / "notes.txt").write_text("not an image")
    caplog.set_level("INFO", logger="sam3_lora.predict")
    out = predict_cmd.run(compose_command("predict", run_dir=run, images=folder, output=tmp_path / "pred"))
    assert len(list(out.glob("*_overlay.png"))) == 2
    assert "on 2 image(s)" in caplog.text
    assert f"skipped 2 entries of images={folder} (also in info.skipped):" in caplog.text
    assert "more/: a folder" in caplog.text and "notes.txt: not an image file" in caplog.text
    info = json.loads((out / "predictions.coco.json").read_text())["info"]
    assert sorted(Path(s["path"]).name for s in info["skipped"]) == ["more", "notes.txt"]


def test_predict_on_a_folder_without_images_names_what_is_there(run, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "readme.md").write_text("#")
    with pytest.raises(PredictError, match=r"no image files there .*found only readme.md"):
        predict_cmd.run(compose_command("predict", run_dir=run, images=folder, output=tmp_path / "pred"))


@pytest.mark.parametrize("prompts", ["[]", "['']", "['cat','  ']", "''"])
def test_empty_prompts_are_refused(prompts, run, toy_root, tmp_path):
    cfg = compose_command("predict", run_dir=run, images=toy_root / "test", prompts=prompts, output=tmp_path / "p")
    with pytest.raises(ConfigError, match=r"prompts=.*each non-empty text, e.g. prompts=\[person"):
        predict_cmd.run(cfg)
    assert not (tmp_path / "p").exists()


def test_empty_prompts_exit_cleanly_from_the_command_line(run, toy_root, tmp_path):
    code, out = _cli("predict", f"run_dir={run}", f"images={toy_root / 'test'}", "prompts=[]", f"output={tmp_path}/p")
    assert code == 2 and "Traceback" not in out and "prompts=[]" in out, out[-2000:]
    assert not (tmp_path / "p").exists()


# ------------------------------------------------------------------ check and trainer.resume (item 11)


def _check(capsys, resume):
    code = check.main(["experiment=quickstart", f"trainer.resume={resume}"])
    line = next(line for line in capsys.readouterr().out.splitlines() if "trainer.resume" in line.split(":")[0])
    return code, line


def test_check_accepts_a_run_to_resume(run, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, line = _check(capsys, run)
    assert code == 0 and line.startswith(f"[ok] trainer.resume: {run / 'checkpoints' / 'last.pt'} (epoch 1, step")


def test_check_fails_on_a_resume_that_cannot_be_used(run, capsys, tmp_path, monkeypatch, tiny_model):
    monkeypatch.chdir(tmp_path)
    code, line = _check(capsys, tmp_path / "missing")
    assert code == 1 and line.startswith("[FAIL] trainer.resume:") and "no checkpoint at" in line
    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    code, line = _check(capsys, empty_run)
    assert code == 1 and f"no checkpoint at {empty_run / 'checkpoints' / 'last.pt'}" in line
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    code, line = _check(capsys, junk)
    assert code == 1 and f"{junk} is unreadable as a PyTorch file" in line
    base = save_sam3_checkpoint(tiny_model, tmp_path / "base.pt")
    code, line = _check(capsys, base)
    assert code == 1 and f"{base} is full SAM3 weights in sam3.pt's layout" in line and "model.checkpoint_path" in line


@pytest.mark.parametrize("craft", [crafted_torch_file, crafted_plain_pickle], ids=["torch_zip", "bare_pickle"])
def test_check_never_unpickles_a_crafted_resume(craft, capsys, tmp_path, monkeypatch, marker):
    monkeypatch.chdir(tmp_path)
    evil = craft(tmp_path / "evil.pt", marker)
    code, line = _check(capsys, evil)
    assert code == 1 and f"{evil} is not a sam3_lora training checkpoint" in line
