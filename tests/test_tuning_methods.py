"""A tuning method is one class and one YAML; nothing outside ``sam3_lora/tuning/`` asks which one a run used."""

import re
from pathlib import Path

import pytest
import torch
from conftest import compose_train, tiny_run_overrides, train_in_process
from hydra.utils import instantiate

from sam3_lora.core.atomic_files import atomic_save
from sam3_lora.core.device import seed_everything
from sam3_lora.pipeline.settings import ConfigError, check_settings
from sam3_lora.runs.renames import current_record
from sam3_lora.training import checkpoint as ckpt
from sam3_lora.runs.results import RunResults
from sam3_lora.tuning import FullFineTuning, LoraTuning, TuningRecordError, method_of_record, method_of_section

PACKAGE = Path(__file__).resolve().parents[1] / "sam3_lora"

# A method of one's own, written where a user would: outside the project, found through
# hydra.searchpath and sys.path. It trains the segmentation head alone.
HEAD_ONLY = '''
from dataclasses import dataclass
from pathlib import Path

import torch

from sam3_lora.core.schema import setting
from sam3_lora.tuning import TuningMethod


@dataclass
class HeadOnlySettings:
    module: str = setting("segmentation_head", "the one module that trains")


class HeadOnly(TuningMethod):
    settings_schema = HeadOnlySettings
    label = "head_only"
    title = "head only (best)"
    name = "head-only tuning"

    def __init__(self, module="segmentation_head"):
        self.module = module

    def apply(self, model):
        model.requires_grad_(False)
        model.get_submodule(self.module).requires_grad_(True)

    def weights_file(self, tag):
        return f"head_{tag}.pt"

    def save(self, model, tag, run_dir, base_model=""):
        path = Path(run_dir) / self.weights_file(tag)
        torch.save(model.get_submodule(self.module).state_dict(), path)
        return path

    def load(self, model, path, allow_base_mismatch=False):
        model.get_submodule(self.module).load_state_dict(torch.load(path))

    def settings(self):
        return {"module": self.module}
'''


@pytest.fixture
def head_only(tmp_path, monkeypatch):
    """The overrides that select the method of one's own: its module on sys.path, its YAML in a config dir."""
    code, conf = tmp_path / "code", tmp_path / "conf" / "lora"
    code.mkdir()
    conf.mkdir(parents=True)
    (code / "head_only_tuning.py").write_text(HEAD_ONLY)
    (conf / "head_only.yaml").write_text("_target_: head_only_tuning.HeadOnly\nmodule: segmentation_head\n")
    monkeypatch.syspath_prepend(str(code))
    return [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "lora=head_only"]


def test_a_method_of_ones_own_trains_from_its_own_yaml(toy_root, tmp_path, head_only):
    run_dir = tmp_path / "run"
    overrides = tiny_run_overrides(toy_root, *head_only, "trainer.max_epochs=2")  # 4 images, batch 4: two steps
    cfg = compose_train(overrides)
    seed_everything(cfg.seed, cfg.trainer.deterministic)  # the base exactly as the run builds it
    base = instantiate(cfg.model).state_dict()
    summary = train_in_process(overrides, run_dir)

    assert summary["tuning"] == {"label": "head_only", "config": {"module": "segmentation_head"}}
    assert set(summary["results"]) == {"head_only"} and summary["results"]["head_only"]["segm/AP"] >= 0
    assert (run_dir / "head_best.pt").is_file() and (run_dir / "head_last.pt").is_file()
    state = ckpt.load(run_dir / "checkpoints" / "last.pt")
    assert state["step"] == 2
    assert state["trainable"] and all(k.startswith("segmentation_head.") for k in state["trainable"])
    saved = torch.load(run_dir / "head_last.pt")
    moved = [k for k, v in saved.items() if not torch.equal(v, base[f"segmentation_head.{k}"])]
    assert moved, "two steps of training changed no weight of the head"
    assert summary["trainable_parameters"] == sum(v.numel() for v in saved.values())


def test_its_settings_are_checked_by_its_schema_before_anything_is_built(toy_root, head_only):
    with pytest.raises(ConfigError, match=r"lora\.colour: unknown key \(the keys of lora: module\)"):
        check_settings(compose_train(tiny_run_overrides(toy_root, *head_only, "+lora.colour=red")))


def test_a_recorded_method_is_built_from_the_registry_never_imported(tmp_path):
    assert isinstance(method_of_section({"_target_": "sam3_lora.tuning.full.FullFineTuning"}, "x"), FullFineTuning)
    lora = method_of_section({"_target_": "sam3_lora.tuning.lora.LoraTuning", "_convert_": "object", "rank": 2}, "x")
    assert isinstance(lora, LoraTuning) and lora.config.rank == 2
    marker = tmp_path / "imported"
    with pytest.raises(TuningRecordError, match="is not a tuning method this package knows"):
        method_of_section({"_target_": "os.system", "command": f"touch {marker}"}, "run/.hydra/config.yaml")
    assert not marker.exists()
    assert method_of_record({"label": "somebody_elses", "config": {}}) is None


def test_run_directories_of_the_earlier_format_read_as_todays():
    old_lora = {"_target_": "sam3_lora.lora.config.LoraConfig", "_convert_": "object", "rank": 4}
    assert isinstance(method_of_section(old_lora, "x"), LoraTuning)
    assert isinstance(method_of_section({}, "x"), FullFineTuning)  # lora=none recorded an empty section
    old = {"lora": old_lora, "optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-4}}
    new = current_record(old)
    assert new["lora"]["_target_"] == "sam3_lora.tuning.lora.LoraTuning"
    assert new["optimizer"]["_target_"] == "sam3_lora.training.optim.adamw"
    assert current_record({"lora": None})["lora"] == {"_target_": "sam3_lora.tuning.full.FullFineTuning"}
    # results.json keeps its labels: an old run's record names the same method
    assert isinstance(method_of_record(RunResults(results={}, tuning={"label": "lora", "config": {"rank": 4}}).tuning), LoraTuning)


# "Which tuning is this?" asked outside the methods: the branches the methods answer instead.
LORA_PRESENCE = [
    (r"\blora_modules\(", "asks whether LoRA layers are there: ask the tuning method (or lora.inject.holds_adapters)"),
    (r"[\"']finetuned[\"']", "the full fine-tuning label: runs/results.py FULL_FINE_TUNING_LABEL, or the method"),
    (r"tuned_label\s*[!=]=", "compares results.json's label: ask the method (method_of_record)"),
    (r"isinstance\([^)]*\b(LoraTuning|FullFineTuning)\b", "branches on the method's class: ask the method"),
    (r"\.lora is (not )?None|\bnot \w+\.lora\b", "tests for a LoRA section: ask the method"),
    (r"LoraConfig\.from_dict", "reads a LoRA config out of a record: method_of_record"),
    (r"vision_backbone\.trunk|language_backbone", "spells a SAM3 module path: sam3_compat/module_paths.py"),
]
# Where they belong: the methods, LoRA itself, its own file formats, and the places paths are named once.
OWNERS = ("tuning/", "lora/", "hf/transformers_peft.py", "sam3_compat/module_paths.py", "runs/results.py")


def test_no_tuning_branch_outside_the_methods():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(OWNERS):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for pattern, why in LORA_PRESENCE:
                if re.search(pattern, code) and not (rel == "models/transformers_keymap.py" and "paths." in code):
                    found.append(f"sam3_lora/{rel}:{number}: {why}: {line.strip()}")
    assert not found, "\n".join(found)


def test_the_trainer_is_built_in_one_place_and_each_part_is_short():
    sites = [
        f"{p.relative_to(PACKAGE)}"
        for p in PACKAGE.rglob("*.py")
        if re.search(r"(?<![\w.])Trainer\(", p.read_text()) and p.name != "trainer.py"
    ]
    assert sites == ["training/trainer_factory.py"], sites
    training = PACKAGE / "training"
    parts = ["trainer.py", "run_state.py", "guards.py", "step_log.py"]
    long = {p: n for p in parts if (n := len((training / p).read_text().splitlines())) > 260}
    assert not long, long


def _as_recorded_before(config: dict) -> dict:
    """A resolved config as run directories recorded it before the lora group built its method and the
    optimizer took named parameters."""
    old = {**config, "optimizer": dict(config["optimizer"]), "lora": dict(config["lora"] or {})}
    old["optimizer"]["_target_"] = "torch.optim.AdamW"
    del old["optimizer"]["lr_scales"]
    if old["lora"].get("_target_") == "sam3_lora.tuning.lora.LoraTuning":
        old["lora"]["_target_"] = "sam3_lora.lora.config.LoraConfig"
    else:
        old["lora"] = {}
    return old


@pytest.mark.parametrize("lora", ["minimal", "none"])
def test_a_run_directory_of_the_earlier_format_resumes_and_loads(toy_root, tmp_path, lora):
    from conftest import compose_command
    from omegaconf import OmegaConf

    from sam3_lora.pipeline.tuned import load_tuned

    run_dir = tmp_path / "run"
    overrides = tiny_run_overrides(toy_root, f"lora={lora}", "trainer.max_epochs=1")
    train_in_process(overrides, run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    state = ckpt.load(last)
    state["run"]["config"] = _as_recorded_before(state["run"]["config"])
    atomic_save(state, last)  # a new file: the loaded state still maps the old one
    hydra_config = run_dir / ".hydra" / "config.yaml"
    OmegaConf.save(OmegaConf.create(_as_recorded_before(OmegaConf.to_container(OmegaConf.load(hydra_config)))), hydra_config)

    tuned = load_tuned(compose_command("evaluate", run_dir=run_dir))  # loads as it did
    assert type(tuned.tuning) is (LoraTuning if lora == "minimal" else FullFineTuning)
    assert tuned.adapter.name == tuned.tuning.weights_file("best")

    resumed = train_in_process(tiny_run_overrides(toy_root, f"lora={lora}", "trainer.max_epochs=2"), run_dir)
    assert ckpt.load(last)["step"] == 2 and resumed["tuning"]["label"] == tuned.tuning.label
