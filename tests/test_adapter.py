"""Adapter files: self-describing, round-trip exactly, and refused where they do not fit."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from synthetic import final_outputs, make_batch, randomize_lora

from sam3_lora.lora import AdapterError, LoraConfig, inject_lora, load_adapter, read_adapter, save_adapter
from sam3_lora.models import build_model


@pytest.fixture
def trained_adapter(tiny_model, tmp_path):
    cfg = LoraConfig(
        rank=4, alpha=8, targets=["all"], parts=["vision", "decoder"], modules_to_save=["dot_prod_scoring"]
    )
    inject_lora(tiny_model, cfg)
    randomize_lora(tiny_model, seed=1)
    with torch.no_grad():
        tiny_model.dot_prod_scoring.hs_proj.weight.add_(0.5)
    path = save_adapter(tiny_model, tmp_path / "adapter.safetensors", base_model="tiny")
    return tiny_model, path


def test_metadata_describes_the_adapter(trained_adapter):
    _, path = trained_adapter
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["format"] == "sam3_lora.adapter"
    assert json.loads(meta["lora_config"])["rank"] == 4
    assert "backbone.vision_backbone.trunk.blocks.0.attn.qkv" in json.loads(meta["targets"])
    assert meta["base_model"] == "tiny" and len(meta["base_fingerprint"]) == 16
    assert set(json.loads(meta["versions"])) == {"sam3_lora", "sam3", "torch"}
    # Adapter weights only: no frozen base tensor is in the file.
    assert all(".lora." in k or k.startswith("dot_prod_scoring.") for k in keys)


def test_round_trip_reproduces_outputs(trained_adapter, tiny_base_state):
    model, path = trained_adapter
    batch = make_batch(112, 2, seed=5)
    model.eval()
    with torch.no_grad():
        expected = final_outputs(model(batch))
    fresh = build_model("tiny")
    fresh.load_state_dict(tiny_base_state)
    info = load_adapter(fresh, path)  # injects the adapter's own layout
    assert info.config.rank == 4
    fresh.eval()
    with torch.no_grad():
        got = final_outputs(fresh(batch))
    for key in ("pred_logits", "pred_boxes", "pred_masks"):
        torch.testing.assert_close(got[key], expected[key])


def test_adapter_for_another_base_is_refused(trained_adapter):
    _, path = trained_adapter
    with pytest.raises(AdapterError, match=r"trained on base model 'tiny'.*model=sam3_tiny\)"):
        load_adapter(build_model("medium"), path)


def test_adapter_with_other_rank_or_targets_is_refused(trained_adapter, tiny_base_state):
    _, path = trained_adapter
    other = build_model("tiny")
    other.load_state_dict(tiny_base_state)
    inject_lora(
        other,
        LoraConfig(rank=8, alpha=8, targets=["all"], parts=["vision", "decoder"], modules_to_save=["dot_prod_scoring"]),
    )
    with pytest.raises(AdapterError, match=r"does not fit this model's LoRA layout.*rank: 4 vs 8"):
        load_adapter(other, path)
    other = build_model("tiny")
    inject_lora(
        other,
        LoraConfig(
            rank=4, alpha=8, targets=["q_proj"], parts=["vision", "decoder"], modules_to_save=["dot_prod_scoring"]
        ),
    )
    with pytest.raises(AdapterError, match=r"targets"):
        load_adapter(other, path)


def test_truncated_or_corrupt_file_is_refused(trained_adapter, tmp_path):
    _, path = trained_adapter
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterError, match="truncated.safetensors is not a readable safetensors adapter"):
        read_adapter(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(AdapterError, match="garbage.safetensors"):
        read_adapter(garbage)


def test_full_checkpoint_is_not_mistaken_for_an_adapter(tmp_path, tiny_base_state):
    not_adapter = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in list(tiny_base_state.items())[:3]}, str(not_adapter))
    with pytest.raises(AdapterError, match="is not a sam3_lora adapter"):
        read_adapter(not_adapter)
    with pytest.raises(AdapterError, match="adapter file not found"):
        read_adapter(tmp_path / "missing.safetensors")


def test_tensor_shape_mismatch_names_the_tensor(trained_adapter, tmp_path, tiny_base_state):
    model, path = trained_adapter
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    name = next(k for k in tensors if k.endswith("lora_A"))
    tensors[name] = torch.zeros(tensors[name].shape[0], tensors[name].shape[1] + 1)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    fresh = build_model("tiny")
    with pytest.raises(AdapterError, match=rf"tensor {name.replace('.', '[.]')} has shape"):
        load_adapter(fresh, bad)


def test_save_is_atomic_and_leaves_no_temp_files(trained_adapter):
    model, path = trained_adapter
    save_adapter(model, path, base_model="tiny")  # overwrite in place
    assert [p.name for p in path.parent.iterdir()] == ["adapter.safetensors"]
