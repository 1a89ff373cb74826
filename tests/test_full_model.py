"""The full-size SAM3 architecture (random weights): every preset fits and is counted,
and sam3.pt-layout checkpoints load through sam3's own loader."""

import copy

import pytest
import torch
from hydra.utils import instantiate

from sam3_lora.lora import count_trainable, inject_lora
from sam3_lora.models import BaseCheckpointError, build_model
from sam3_lora.models.base_checkpoint import load_base_checkpoint
from sam3_lora.pipeline.settings import compose

# Trainable parameters measured on the 840M model, as recorded in the design brief.
EXPECTED_M = {"minimal": 0.65, "balanced": 5.98, "full": 19.49}


@pytest.fixture(scope="module")
def full_sam3():
    return build_model("sam3", random_init=True)


def test_full_architecture_matches_stock_size(full_sam3):
    assert sum(p.numel() for p in full_sam3.parameters()) == pytest.approx(840.5e6, rel=1e-3)


@pytest.mark.parametrize("preset", list(EXPECTED_M))
def test_every_preset_fits_the_full_model(full_sam3, preset):
    cfg = compose("train", [f"lora={preset}"])
    model = copy.deepcopy(full_sam3)
    report = inject_lora(model, instantiate(cfg.lora).config)  # the LoRA method's settings
    assert count_trainable(model) / 1e6 == pytest.approx(EXPECTED_M[preset], abs=0.01)
    assert len(report.targets) > 0
    del model


def test_missing_checkpoint_says_where_to_get_it(tmp_path):
    with pytest.raises(BaseCheckpointError, match=r"(?s)huggingface.co/facebook/sam3.*model.checkpoint_path"):
        build_model("sam3", checkpoint_path=str(tmp_path / "sam3.pt"))
    with pytest.raises(BaseCheckpointError, match="No SAM3 checkpoint configured"):
        build_model("sam3", checkpoint_path=None)


def test_sam3_pt_layout_loads_through_sam3_loader(tmp_path, tiny_base_state):
    """sam3.pt keeps the image model under 'detector.' (and the tracker under 'tracker.')."""
    ckpt = {"model": {f"detector.{k}": v for k, v in tiny_base_state.items()}}
    ckpt["model"]["tracker.some.weight"] = torch.zeros(1)
    path = tmp_path / "sam3.pt"
    torch.save(ckpt, path)
    torch.manual_seed(123)
    model = build_model("tiny")
    assert not torch.equal(model.dot_prod_scoring.hs_proj.weight, tiny_base_state["dot_prod_scoring.hs_proj.weight"])
    load_base_checkpoint(model, str(path))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, tiny_base_state[k], msg=k)


def test_adapter_passed_as_checkpoint_is_refused(tmp_path):
    with pytest.raises(ValueError, match="adapter=path"):
        load_base_checkpoint(build_model("tiny"), str(tmp_path / "adapter.safetensors"))


def test_key_map_covers_the_full_architecture(full_sam3):
    """Every tensor of the 840M model has its transformers counterpart (or is named as having none), and the
    converted set is exactly Sam3Model's for the Sam3Config built from the stock size."""
    pytest.importorskip("transformers")
    import sam3_lora.models.transformers_keymap as keymap
    from sam3_lora.hf.transformers_config import sam3_config
    from sam3_lora.hf.transformers_model import check_against, empty_sam3_model
    from sam3_lora.models import SIZES
    from sam3_lora.models.assembly import measure_size

    assert measure_size(full_sam3) == SIZES["full"]
    state = {k: v.to("meta") for k, v in full_sam3.state_dict().items()}
    converted = keymap.to_transformers(state)
    check_against(empty_sam3_model(sam3_config(SIZES["full"])), converted.tensors)
    assert len(converted.left_out) == 32 + 6 + 1  # RoPE buffers of 32 blocks, point encoder, class-token row
