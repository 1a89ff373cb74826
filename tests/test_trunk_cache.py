"""The frozen image trunk's features computed once per image (sam3_lora/speed/trunk_cache.py) and the
heads-only preset that lets them be."""

import copy
import json

import pytest
import torch
from conftest import compose_train, tiny_run_overrides, train_in_process
from safetensors.torch import load_file
from synthetic import make_batch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sam3_lora.models import build_model
from sam3_lora.pipeline.settings import check_settings
from sam3_lora.sam3_compat.module_paths import trunk_of
from sam3_lora.speed.trunk_cache import install_trunk_cache


def _trunk_out(model, x):
    with torch.no_grad():
        return [t.clone() for t in trunk_of(model)(x)]


@pytest.fixture
def frozen(tiny_model):
    return tiny_model.requires_grad_(False).eval()


def test_each_image_goes_through_the_trunk_once_and_the_features_are_the_same(frozen):
    x = make_batch(112, 2, seed=1).img_batch
    want = _trunk_out(frozen, x)
    cache = install_trunk_cache(frozen)
    first, second = _trunk_out(frozen, x), _trunk_out(frozen, x)
    assert (cache.misses, cache.hits) == (2, 2)
    for a, b, c in zip(want, first, second):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
        torch.testing.assert_close(c, a, rtol=0, atol=0)
    _trunk_out(frozen, torch.stack([x[1], x[0]]))  # the same images in another batch: by content
    assert (cache.misses, cache.hits) == (2, 4)


def test_nothing_is_reused_across_weights_size_dtype_or_transform(frozen, tiny_base_state):
    x = make_batch(112, 2, seed=1).img_batch
    cache = install_trunk_cache(frozen)
    _trunk_out(frozen, x)
    _trunk_out(frozen, x.flip(-1))  # a horizontal flip is another image: its own entries
    assert (cache.misses, cache.hits) == (4, 0)
    _trunk_out(frozen, x.to(torch.float64).to(torch.float32) + 1e-3)  # other content
    assert cache.hits == 0
    other = copy.deepcopy(frozen)
    with torch.no_grad():
        trunk_of(other).blocks[0].mlp.fc1.weight.mul_(1.01)  # another base: another fingerprint
    other_cache = install_trunk_cache(other)
    other_cache.memory = cache.memory  # even sharing the entries, none is taken for the other weights
    before = other_cache.hits
    _trunk_out(other, x)
    assert other_cache.hits == before
    assert cache.keys(x) != cache.keys(x.double().float().contiguous().to(torch.float64))  # dtype in the key
    small = build_model("tiny", overrides={"img_size": 56, "pretrain_img_size": 56}).requires_grad_(False).eval()
    assert install_trunk_cache(small).keys(x[:, :, :56, :56].contiguous())[0] not in cache.memory  # size in the key


def test_the_cache_steps_aside_while_the_trunk_trains(tiny_model):
    cache = install_trunk_cache(tiny_model)  # a fresh model: every weight requires a gradient
    x = make_batch(112, 2, seed=1).img_batch
    out = trunk_of(tiny_model)(x)
    assert (cache.hits, cache.misses) == (0, 0) and out[0].requires_grad


def test_a_disk_cache_is_shared_by_runs_and_a_damaged_entry_is_rebuilt(frozen, tmp_path):
    x = make_batch(112, 2, seed=1).img_batch
    want = _trunk_out(frozen, x)
    writer = install_trunk_cache(frozen, max_memory_gb=0, disk_dir=tmp_path)  # nothing fits in memory
    _trunk_out(frozen, x)
    files = sorted(tmp_path.glob("*.pt"))
    assert len(files) == 2
    reader_model = copy.deepcopy(frozen)
    del trunk_of(reader_model).forward  # the copy carries the cache: start from the stock trunk
    reader = install_trunk_cache(reader_model, max_memory_gb=0, disk_dir=tmp_path)
    got = _trunk_out(reader_model, x)
    assert reader.disk_hits == 2 and reader.misses == 0
    for a, b in zip(want, got):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    files[0].write_bytes(files[0].read_bytes()[:100])  # truncated
    again = _trunk_out(reader_model, x)
    assert reader.rebuilt == 1 and reader.misses == 1
    for a, b in zip(want, again):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert writer.misses == 2


def _heads_run(toy_root, run_dir, *extra):
    overrides = tiny_run_overrides(toy_root, "lora=heads", "logger=tensorboard", "lora.dropout=0", *extra)
    return train_in_process(overrides, run_dir)


def _losses(run_dir):
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [e.value for e in acc.Scalars("train/loss")]


def test_cached_and_uncached_training_give_the_same_losses_and_adapters(toy_root, tmp_path):
    cached = _heads_run(toy_root, tmp_path / "cached", "trainer.max_epochs=3")
    plain = _heads_run(toy_root, tmp_path / "plain", "trainer.max_epochs=3", "trainer.trunk_cache=false")
    assert cached["trunk_cache"]["hits"] > 0 and plain["trunk_cache"] is None
    a, b = _losses(tmp_path / "cached"), _losses(tmp_path / "plain")
    assert len(a) == 3 and a == pytest.approx(b, rel=1e-5)
    wa, wb = (load_file(tmp_path / d / "adapter_last.safetensors") for d in ("cached", "plain"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)
    assert cached["results"]["lora"]["segm/AP"] == pytest.approx(plain["results"]["lora"]["segm/AP"], abs=1e-6)


def test_the_cache_is_hit_images_times_later_epochs_in_training(toy_root, tmp_path):
    epochs, images = 4, 4
    summary = _heads_run(toy_root, tmp_path, f"trainer.max_epochs={epochs}", "dataset.valid=null", "dataset.test=null")
    assert summary["trunk_cache"] == {"hits": images * (epochs - 1), "misses": images, "disk_hits": 0, "rebuilt": 0}
    assert json.loads((tmp_path / "results.json").read_text())["trunk_cache"]["hits"] == images * (epochs - 1)


def test_beyond_the_memory_budget_features_go_to_the_run_directory_until_the_run_ends(toy_root, tmp_path):
    summary = _heads_run(toy_root, tmp_path, "trainer.max_epochs=2", "trainer.trunk_cache_memory_gb=0")
    stats = summary["trunk_cache"]
    assert stats["disk_hits"] > 0 and stats["disk_hits"] == stats["hits"] and stats["rebuilt"] == 0
    assert not (tmp_path / "trunk_cache").exists()


@pytest.mark.parametrize(
    "extra,why",
    [
        (["lora=balanced"], "trains the image trunk"),
        (["lora=none"], "trains the image trunk"),
        (["lora=heads", "dataset.augment.scale_min=0.5"], "resizes each training image at random"),
    ],
    ids=["balanced", "full fine-tuning", "random resize"],
)
def test_the_cache_is_not_used_when_its_conditions_do_not_hold(toy_root, tmp_path, caplog, extra, why):
    caplog.set_level("INFO", logger="sam3_lora.train")
    summary = train_in_process(tiny_run_overrides(toy_root, "trainer.max_epochs=1", *extra), tmp_path)
    assert summary["trunk_cache"] is None
    assert "trunk cache off: " in caplog.text and why in caplog.text


def test_the_heads_preset_leaves_the_trunk_frozen():
    s = check_settings(compose_train(["model=sam3_tiny", "lora=heads"]))
    assert s.tuning.config.parts == ["geometry", "encoder", "decoder", "segmentation"]
    model = build_model("tiny")
    assert not s.tuning.adapts_trunk(model)
    s.tuning.apply(model)
    assert not any(p.requires_grad for p in trunk_of(model).parameters())
    assert any(p.requires_grad for p in model.transformer.decoder.parameters())
