"""Files a user or a crashed run hands in are checked before they are used: results.json, the held-out
scores a resumed run reuses, a run's .hydra/ record, adapter metadata, a transformers index and config,
a sweep's runs. Each broken one is a UserError (the commands' exit code 2) whose message names the
file and the key, never a bare JSONDecodeError or KeyError; nothing is allocated from a size that
only the metadata claims; a sweep report leaves a broken run out and says so.

Files are crafted directly (one small adapter is saved once per module), so each test takes
well under a second apart from the two command-line ones."""

import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sam3_lora.core.errors import UserError
from sam3_lora.data.config import Split
from sam3_lora.hf.model_card import RunFacts
from sam3_lora.lora import LoraConfig, inject_lora, load_adapter, read_adapter, save_adapter
from sam3_lora.models import build_model
from sam3_lora.models.transformers_checkpoint import weight_files
from sam3_lora.pipeline.scoring import ScoredDataset
from sam3_lora.pipeline.tuned import Tuned
from sam3_lora.runs.results import RunResults
from sam3_lora.runs.sweep_report import collect, write_report

REPO = Path(__file__).resolve().parent.parent


def _cli(module, *args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", f"sam3_lora.{module}", *map(str, args)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    return res.returncode, res.stdout + res.stderr


def _refused(fn, *args, names=()):
    """The UserError ``fn(*args)`` stops with; its message names every string in ``names``."""
    with pytest.raises(UserError) as info:
        fn(*args)
    message = str(info.value)
    for name in names:
        assert str(name) in message, f"{name!r} not named in: {message}"
    return message


# ----------------------------------------------------------------------------- results.json


def _metrics(bbox=0.3, segm=0.4):
    return {"bbox/AP": bbox, "segm/AP": segm, "segm/cgF1": 0.2}


def _results(**changes):
    """A results.json as a finished LoRA run with a retention dataset writes it."""
    d = {
        "results": {"base": _metrics(0.1, 0.2), "lora": _metrics()},
        "heldout_split": "test",
        "tuning": {"label": "lora", "config": {"rank": 2, "alpha": 4.0}},
        "trainable_parameters": 1000,
        "best_val": 0.3,
        "world_size": 1,
        "overrides": "seed=0,recipe=lora",
        "seed": 0,
        "step_time_s": 0.1,
        "dataset": {"name": "toy", "root": "/data/toy", "splits": {"train": {"images": 4, "annotations": 4}}},
        "notes": [],
        "retention": {"dataset": "src", "split": "test", "base": _metrics(0.6, 0.7), "tuned": _metrics(0.5, 0.6)},
    }
    d.update(changes)
    return d


def _write_results(run_dir: Path, content) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "results.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


TRUNCATED = json.dumps(_results())[:150]  # what a run killed while writing leaves
BROKEN_RESULTS = {
    "truncated": (TRUNCATED, "line 1"),
    "empty file": ("", "line 1"),
    "a list": ("[1, 2]", "not a mapping"),
    "no results key": (json.dumps({"seed": 0}), "results: missing"),
    "string where a number": (_results(trainable_parameters="many"), "trainable_parameters"),
    "a score as text": (_results(results={"lora": {"segm/AP": "0.5"}}), "segm/AP"),
    "an infinite score": (json.dumps(_results(best_val=math.inf)), "best_val"),
    "retention without its dataset": (_results(retention={"split": "test", "base": _metrics()}), "retention.dataset"),
    "a scale point without scores": (_results(adapter_scales=[{"scale": 0.5}]), "adapter_scales[0].target"),
    "tuning as a list": (_results(tuning=["lora"]), "tuning"),
}


@pytest.mark.parametrize("content,key", BROKEN_RESULTS.values(), ids=BROKEN_RESULTS.keys())
def test_a_broken_results_file_is_refused_naming_file_and_key(content, key, tmp_path):
    path = _write_results(tmp_path / "run", content)
    message = _refused(RunResults.read, tmp_path / "run", names=(path, key))
    assert "Re-run the training" in message or "delete the file" in message


def test_not_utf8_results_is_refused(tmp_path):
    path = tmp_path / "run" / "results.json"
    path.parent.mkdir()
    path.write_bytes(b"\xff\xfe{}")
    _refused(RunResults.read, path, names=(path, "UTF-8"))


def test_an_oversized_results_file_is_refused_unread(tmp_path):
    path = tmp_path / "run" / "results.json"
    path.parent.mkdir()
    with open(path, "wb") as f:  # sparse: 200 MiB on paper, nothing on disk
        f.seek(200 << 20)
        f.write(b"}")
    _refused(RunResults.read, path, names=(path, "too large"))


def test_a_well_formed_results_file_reads(tmp_path):
    r = RunResults.read(_write_results(tmp_path / "run", _results(extra_key_of_a_newer_writer=1)))
    assert r.tuned["segm/AP"] == 0.4 and r.dataset.name == "toy"


# ----------------------------------------------------------------------------- the sweep report


def test_a_sweep_report_leaves_out_a_broken_run_and_says_so(tmp_path, caplog):
    _write_results(tmp_path / "a", _results(overrides="seed=0,recipe=lora", seed=0))
    _write_results(tmp_path / "b", _results(overrides="seed=1,recipe=lora", seed=1))
    broken = _write_results(tmp_path / "c", TRUNCATED)
    with caplog.at_level(logging.WARNING):
        md = write_report(tmp_path).read_text()
    assert "Left out: 1 run(s)" in md and str(broken) in md  # a figure computed without it is never silent
    assert str(broken) in caplog.text
    assert "| recipe=lora | 2 |" in md or "| (defaults) | 2 |" in md


def test_a_run_whose_retention_base_was_not_recorded_has_no_source_change(tmp_path):
    retention = {"dataset": "src", "split": "test", "base": None, "tuned": _metrics()}
    _write_results(tmp_path / "a", _results(retention=retention))
    (run,) = collect(tmp_path)
    assert run.values["source_change_segm_AP"] is None and run.values["target_segm_AP"] == 0.4


def test_a_sweep_of_only_broken_runs_is_refused_naming_them(tmp_path):
    a = _write_results(tmp_path / "a", TRUNCATED)
    b = _write_results(tmp_path / "b", _results(results={"lora": {"segm/AP": None, "bbox/AP": "x"}}))
    _refused(collect, tmp_path, names=(a, b, "no finished run"))


def test_the_report_command_exits_cleanly_on_broken_runs(tmp_path):
    broken = _write_results(tmp_path / "a", TRUNCATED)
    code, out = _cli("report", tmp_path)
    assert code == 2 and "Traceback" not in out, out[-3000:]
    assert str(broken) in out


# ----------------------------------------------------------------------------- model cards


def _run_record(run_dir: Path, config: str, overrides: str) -> Path:
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text(config)
    (run_dir / ".hydra" / "overrides.yaml").write_text(overrides)
    return run_dir


GOOD_CONFIG = "model:\n  name: tiny\n  checkpoint_path: null\nseed: 0\n"
BROKEN_RECORDS = {
    "overrides unreadable": (GOOD_CONFIG, "- [unclosed\n", "overrides.yaml"),
    "overrides a mapping": (GOOD_CONFIG, "model: sam3_tiny\n", "overrides.yaml"),
    "config unreadable": ("model: [unclosed\n", "- seed=0\n", "config.yaml"),
    "config a list": ("- 1\n- 2\n", "- seed=0\n", "config.yaml"),
    "model section a string": ("model: tiny\nseed: 0\n", "- seed=0\n", "config.yaml"),
}


@pytest.mark.parametrize("config,overrides,file", BROKEN_RECORDS.values(), ids=BROKEN_RECORDS.keys())
def test_a_model_card_refuses_a_broken_run_record(config, overrides, file, tmp_path):
    run_dir = _run_record(tmp_path / "run", config, overrides)
    _refused(RunFacts.read, run_dir, names=(run_dir / ".hydra" / file,))


def test_a_model_card_refuses_a_broken_results_file(tmp_path):
    run_dir = _run_record(tmp_path / "run", GOOD_CONFIG, "- seed=0\n")
    path = _write_results(run_dir, TRUNCATED)
    _refused(RunFacts.read, run_dir, names=(path,))


def test_a_distillation_record_without_its_weight_is_refused_before_the_card_renders(tmp_path):
    preserve = {"vocabulary": ["dog"], "anchor_batch": 2, "images": "target"}  # no weight
    path = _write_results(tmp_path / "run", _results(preserve=preserve))
    _refused(RunResults.read, path, names=(path, "preserve.weight"))


# ----------------------------------------------------------------------------- held-out scores (resume)


def _scored(path: Path) -> ScoredDataset:
    scorer = SimpleNamespace(data=SimpleNamespace(name="toy"), split="test")
    return ScoredDataset("target", scorer, path, True)


BROKEN_SCORES = {
    "truncated": ('{"dataset": "toy", "split": "te', "line 1"),
    "a list": ("[]", "not a mapping"),
    "base as text": (json.dumps({"dataset": "toy", "split": "test", "base": "0.5"}), "base"),
    "an unknown key only": (json.dumps({"scores": {}}), "dataset: missing"),
    "another dataset's": (json.dumps({"dataset": "coco", "split": "test", "base": {"segm/AP": 0.5}}), "coco"),
}


@pytest.mark.parametrize("content,key", BROKEN_SCORES.values(), ids=BROKEN_SCORES.keys())
def test_broken_heldout_scores_are_refused_naming_file_and_key(content, key, tmp_path):
    path = tmp_path / "heldout_target.json"
    path.write_text(content)
    message = _refused(_scored(path).read, names=(path, key))
    assert "delete it" in message


def test_heldout_scores_as_written_read_back(tmp_path):
    entry = _scored(tmp_path / "heldout_target.json")
    scores = entry.read()
    scores.base = {"segm/AP": 0.5}
    entry.write(scores)
    assert entry.read().base == {"segm/AP": 0.5}


# ----------------------------------------------------------------------------- a tuned run's training categories


def test_concept_routing_refuses_a_truncated_annotation_file(tmp_path):
    ann = tmp_path / "train.json"
    ann.write_text('{"images": [], "categories": [{"name": "do')
    dataset = SimpleNamespace(train=Split(str(ann), str(tmp_path)), negative_prompt_names=lambda: [])
    tuned = Tuned(model=None, model_cfg=None, dataset=dataset, adapter=None, info=None)
    _refused(tuned.tuned_concepts, names=(ann,))


# ----------------------------------------------------------------------------- adapter files


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_base_state):
    """A small LoRA adapter of the tiny model (rank 2, q and out of the decoder's attention)."""
    model = build_model("tiny")
    model.load_state_dict(tiny_base_state)
    inject_lora(model, LoraConfig(rank=2, alpha=4, targets=["q_proj", "out_proj"], parts=["decoder"]))
    return save_adapter(model, tmp_path_factory.mktemp("adapter") / "adapter.safetensors", base_model="tiny")


@pytest.fixture(scope="module")
def fresh_model(tiny_base_state):
    """The base an adapter is loaded onto; every refusal below must leave it without LoRA."""
    model = build_model("tiny")
    model.load_state_dict(tiny_base_state)
    return model


def _contents(path):
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}


def _crafted(adapter, tmp_path, meta_changes=None, tensors=None, config_changes=None):
    meta, found = _contents(adapter)
    if config_changes is not None:
        meta["lora_config"] = json.dumps({**json.loads(meta["lora_config"]), **config_changes})
    for key, value in (meta_changes or {}).items():
        if value is None:
            meta.pop(key)
        else:
            meta[key] = value
    path = tmp_path / "crafted.safetensors"
    save_file(tensors(found) if tensors else found, str(path), metadata=meta)
    return path


def _first(found, suffix):
    return next(k for k in sorted(found) if k.endswith(suffix))


BROKEN_METADATA = {
    "truncated lora_config": ({"meta_changes": {"lora_config": '{"rank": 2, "al'}}, "lora_config"),
    "rank as text": ({"config_changes": {"rank": "2"}}, "rank"),
    "negative rank": ({"config_changes": {"rank": -2}}, "rank"),
    "rank 1.5": ({"config_changes": {"rank": 1.5}}, "rank"),
    "targets a list": ({"meta_changes": {"targets": '["q_proj"]'}}, "targets"),
    "targets' updates not names": ({"meta_changes": {"targets": '{"transformer.x": [1]}'}}, "targets"),
    "no targets": ({"meta_changes": {"targets": None}}, "targets"),
    "modules_to_save not names": ({"meta_changes": {"modules_to_save": "[1]"}}, "modules_to_save"),
    "versions not text": ({"meta_changes": {"versions": '{"torch": 2}'}}, "versions"),
    "another rank than the tensors'": ({"config_changes": {"rank": 4}}, "rank 4"),
    "a listed tensor missing": (
        {"tensors": lambda found: {k: v for k, v in found.items() if k != _first(found, "lora_B")}},
        "no tensor",
    ),
    "a tensor not listed": (
        {"tensors": lambda found: {**found, "backbone.extra.weight": torch.zeros(2, 2)}},
        "backbone.extra.weight",
    ),
    "a tensor of another rank": (
        {"tensors": lambda found: {**found, _first(found, "lora_A"): found[_first(found, "lora_A")][:1].clone()}},
        "not rank 2",
    ),
}


@pytest.mark.parametrize("craft,key", BROKEN_METADATA.values(), ids=BROKEN_METADATA.keys())
def test_adapter_metadata_is_checked_against_its_tensors(craft, key, adapter, tmp_path):
    path = _crafted(adapter, tmp_path, **craft)
    _refused(read_adapter, path, names=(path, key))


def test_the_adapter_as_saved_reads_back(adapter):
    info, tensors = read_adapter(adapter)
    assert info.config.rank == 2 and all(t.shape[0] == 2 for k, t in tensors.items() if k.endswith("lora_A"))


def test_a_huge_rank_is_refused_before_anything_is_allocated(adapter, fresh_model, tmp_path):
    path = _crafted(adapter, tmp_path, config_changes={"rank": 10**12})
    start = time.perf_counter()
    _refused(load_adapter, fresh_model, path, names=(path, "rank"))
    assert time.perf_counter() - start < 5
    assert getattr(fresh_model, "lora_report", None) is None  # no LoRA layer was built from the claimed rank


def test_describe_exits_cleanly_on_a_crafted_adapter(adapter, tmp_path):
    path = _crafted(adapter, tmp_path, config_changes={"rank": "2"})
    code, out = _cli("describe", path)
    assert code == 2 and "Traceback" not in out, out[-3000:]
    assert str(path) in out and "rank" in out


# ----------------------------------------------------------------------------- transformers checkpoints


def _index(folder: Path, content) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.safetensors.index.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_a_shard_outside_the_checkpoint_folder_is_refused(tmp_path):
    save_file({"x": torch.zeros(1)}, str(tmp_path / "elsewhere.safetensors"))
    path = _index(tmp_path / "hf", {"weight_map": {"vision_encoder.x": "../elsewhere.safetensors"}})
    _refused(weight_files, path, names=(path, "../elsewhere.safetensors"))


BROKEN_INDEXES = {
    "truncated": ('{"weight_map": {"a": "model-0', "line 1"),
    "shard names not text": ({"weight_map": {"vision_encoder.x": 3}}, "weight_map"),
    "no weight_map": ({"metadata": {}}, "weight_map"),
}


@pytest.mark.parametrize("content,key", BROKEN_INDEXES.values(), ids=BROKEN_INDEXES.keys())
def test_a_broken_safetensors_index_is_refused(content, key, tmp_path):
    path = _index(tmp_path / "hf", content)
    _refused(weight_files, tmp_path / "hf", names=(path, key))
