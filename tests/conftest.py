import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from sam3_lora.core.conf import CONF_DIR  # noqa: E402, F401 - CONF_DIR for tests
from sam3_lora.models import build_model  # noqa: E402
from sam3_lora.pipeline.settings import compose  # noqa: E402


@pytest.fixture(scope="session")
def tiny_base_state():
    """One tiny SAM3's weights, so every test starts from the same base cheaply."""
    torch.manual_seed(0)
    return build_model("tiny").state_dict()


@pytest.fixture
def tiny_model(tiny_base_state):
    model = build_model("tiny")
    model.load_state_dict(tiny_base_state)
    return model


def compose_command(name, **values):
    """The config of `python -m sam3_lora.<name> key=value ...` (evaluate, predict, export)."""
    return compose(name, [f"{k}={v}" for k, v in values.items()])


def compose_train(overrides):
    """The training config exactly as `python -m sam3_lora.train <overrides>` composes it."""
    return compose("train", overrides)


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory):
    """A small shifted-domain toy dataset, generated once per test session."""
    from sam3_lora.data import toy

    return toy.generate(
        tmp_path_factory.mktemp("toy"), domain="shifted", seed=0, splits={"train": 4, "valid": 4, "test": 4}
    )


def tiny_run_overrides(toy_root, *extra):
    """A seconds-long training run of the tiny model on the toy data."""
    return [
        "model=sam3_tiny",
        "dataset=toy",
        f"dataset.root={toy_root}",
        "dataset.generate=null",
        "dataset.augment.hflip=0",
        "dataset.augment.scale_min=1.0",
        "logger=none",
        "final_eval.compare_base=false",
        "trainer.batch_size=4",
        "trainer.num_workers=0",
        "trainer.log_every=1",
        "trainer.max_epochs=2",
        "optimizer.lr=3e-3",
        *extra,
    ]


def train_in_process(overrides, run_dir):
    """`python -m sam3_lora.train` without the subprocess: Hydra's saved config, then the run."""
    from omegaconf import OmegaConf

    from sam3_lora.train import run

    cfg = compose_train(overrides)
    (Path(run_dir) / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, Path(run_dir) / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), Path(run_dir) / ".hydra" / "overrides.yaml")
    return run(cfg, Path(run_dir))


def pytest_collection_modifyitems(config, items):
    """`cuda` tests need a GPU: skipped with the reason where there is none (CI), run by `make test-gpu`."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible); run `make test-gpu` on a GPU machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def train_interrupted_then_resumed(overrides, run_dir, monkeypatch, at_epoch: int = 1):
    """Train in ``run_dir``, interrupted as epoch ``at_epoch`` starts (after its checkpoint), then
    the same command again, which resumes from it; returns the second run's summary."""
    from sam3_lora.training import checkpoint as ckpt
    from sam3_lora.training.trainer import Trainer

    original = Trainer.train_epoch

    def preempted(self):
        if self.epoch == at_epoch:
            raise KeyboardInterrupt("simulated preemption")
        return original(self)

    monkeypatch.setattr(Trainer, "train_epoch", preempted)
    with pytest.raises(KeyboardInterrupt):
        train_in_process(overrides, run_dir)
    assert ckpt.load(Path(run_dir) / ckpt.CHECKPOINT_DIR / ckpt.LAST)["epoch"] == at_epoch
    monkeypatch.setattr(Trainer, "train_epoch", original)
    return train_in_process(overrides, run_dir)


_TRACEBACK = "Traceback (most recent call last)"


@pytest.fixture(autouse=True, scope="session")
def no_command_prints_a_traceback():
    """Every ``python -m sam3_lora.<command>`` a test runs and reads the output of, hostile cases
    included, ends in a clean message: a traceback reaching its user fails the test that ran it."""
    import subprocess

    communicate = subprocess.Popen.communicate

    def checked(self, *args, **kwargs):
        out, err = communicate(self, *args, **kwargs)
        command = self.args if isinstance(self.args, (list, tuple)) else [self.args]
        if any(str(a).startswith("sam3_lora.") for a in command):
            text = "".join(t.decode(errors="replace") if isinstance(t, bytes) else t for t in (out, err) if t)
            assert _TRACEBACK not in text, f"{' '.join(map(str, command))[:300]} printed a traceback:\n{text[-3000:]}"
        return out, err

    subprocess.Popen.communicate = checked
    yield
    subprocess.Popen.communicate = communicate
