"""Speed levers leave results as they are: the text-encoder cache gives exactly the stock outputs and
losses and steps aside whenever the text encoder can change; a bf16 frozen base stays within rounding."""

import copy
import random

import pytest
import torch
from synthetic import lora_training_losses, make_batch, randomize_lora

from sam3_lora.lora import LoraConfig, inject_lora, lora_parameters
from sam3_lora.sam3_compat.module_paths import text_backbone_of as text_encoder
from sam3_lora.speed.compiled_blocks import compile_vit_blocks
from sam3_lora.speed.frozen_precision import hold_frozen_weights_in
from sam3_lora.speed.text_cache import install_text_cache, remove_text_cache
from sam3_lora.training.loss import build_sam3_loss, compute_loss, core_loss

NAMES = ["circle", "square", "triangle", "hard hat", "person", "a red car", "dog", "traffic light"]


def test_cached_outputs_are_the_stock_outputs(tiny_model):
    tiny_model.requires_grad_(False).eval()
    cache = install_text_cache(tiny_model)
    assert install_text_cache(tiny_model) is cache  # installing twice keeps one cache
    rng, seen, asked = random.Random(0), set(), 0
    with torch.no_grad():
        for _ in range(6):  # subsets in any order: prompts seen before come from the cache
            captions = rng.sample(NAMES, rng.randint(1, len(NAMES)))
            cached = text_encoder(tiny_model)(captions, None, device="cpu")
            for got, want in zip(cached, cache.stock_forward(captions, None, device="cpu")):
                assert got.shape == want.shape and torch.equal(got, want)
            seen.update(captions)
            asked += len(captions)
    assert cache.misses == len(seen) == len(cache.entries) and cache.hits == asked - len(seen) > 0
    remove_text_cache(tiny_model)
    assert "forward" not in text_encoder(tiny_model).__dict__


def test_autocast_outputs_are_cached_apart(tiny_model):
    tiny_model.requires_grad_(False).eval()
    cache = install_text_cache(tiny_model)
    encode = text_encoder(tiny_model)
    with torch.no_grad():
        fp32 = encode(["circle"], None, device="cpu")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = encode(["circle"], None, device="cpu")
    assert cache.misses == 2 and fp32[1].dtype == torch.float32 and bf16[1].dtype == torch.bfloat16


def test_training_with_the_cache_gives_exactly_the_same_losses(tiny_model):
    # balanced: the text encoder is frozen, so the cache serves every step after the first
    inject_lora(tiny_model, LoraConfig(rank=4, alpha=8, parts=["vision", "encoder", "decoder"]))
    tiny_model.train()
    cached_model = copy.deepcopy(tiny_model)
    cache = install_text_cache(cached_model)
    want, got = lora_training_losses(tiny_model), lora_training_losses(cached_model)
    assert torch.equal(got, want), (got, want)
    for a, b in zip(lora_parameters(tiny_model), lora_parameters(cached_model)):
        assert torch.equal(a, b)
    assert cache.misses == 2 and cache.hits == 4  # "square", "circle": encoded once, reused twice


@pytest.mark.parametrize("trainable", ["lora on text", "text modules_to_save"])
def test_the_cache_steps_aside_while_the_text_encoder_trains(tiny_model, trainable):
    if trainable == "lora on text":
        inject_lora(tiny_model, LoraConfig(rank=4, alpha=8, parts=["text"]))
    else:
        inject_lora(
            tiny_model,
            LoraConfig(rank=4, alpha=8, parts=["vision"], modules_to_save=["backbone.language_backbone.resizer"]),
        )
    cache = install_text_cache(tiny_model.train())
    lora_training_losses(tiny_model, steps=2)
    assert not cache.active() and cache.misses == cache.hits == 0


# ------------------------------------------------------------------ frozen base weights in bf16
@pytest.mark.parametrize("parts", [["vision", "encoder", "decoder"], ["all"]], ids=["balanced", "every part"])
def test_a_bf16_base_trains_within_tolerance_of_the_fp32_base(tiny_model, parts):
    inject_lora(tiny_model, LoraConfig(rank=4, alpha=8, targets=["all"], parts=parts))
    tiny_model.train()
    bf16 = copy.deepcopy(tiny_model)
    saved = hold_frozen_weights_in(bf16, torch.bfloat16)
    matrices = [p for n, p in bf16.named_parameters() if p.dtype == torch.bfloat16]
    assert saved == sum(p.numel() * 2 for p in matrices) > 0
    assert all(not p.requires_grad and p.dim() >= 2 for p in matrices)
    assert all(p.dtype == torch.float32 for p in lora_parameters(bf16))
    # everything after the backbones stays fp32 (sam3's decoder FFN runs with autocast off on CUDA)
    assert all(p.dtype == torch.float32 for n, p in bf16.named_parameters() if n.startswith("transformer."))
    want, got = lora_training_losses(tiny_model, lr=1e-3, bf16=True), lora_training_losses(bf16, lr=1e-3, bf16=True)
    # bf16 keeps 8 bits of mantissa (weights round by up to 2^-9 relative): the first loss agrees to
    # 1e-3 (measured 1e-4); three AdamW steps later the runs have drifted apart by about 1e-3
    assert torch.allclose(got[0], want[0], rtol=1e-3) and torch.allclose(got, want, rtol=5e-3), (got, want)


@pytest.mark.parametrize("amp", ["off", "auto"])  # auto is bf16 on CUDA only
def test_a_bf16_base_without_bf16_autocast_is_refused(amp):
    from conftest import compose_train

    from sam3_lora.pipeline.settings import ConfigError, check_settings

    cfg = compose_train(["model=sam3_tiny", "trainer.device=cpu", f"trainer.amp={amp}", "trainer.base_dtype=bf16"])
    with pytest.raises(ConfigError, match="trainer.base_dtype='bf16': needs bf16 autocast.*set trainer.amp=bf16"):
        check_settings(cfg)


# ------------------------------------------------------------------ compiled ViT blocks
def test_compiled_vit_blocks_match_eager(tiny_model):
    inject_lora(tiny_model, LoraConfig(rank=4, alpha=8, parts=["vision"]))
    randomize_lora(tiny_model)
    tiny_model.train()
    compiled = copy.deepcopy(tiny_model)
    assert compile_vit_blocks(compiled) == len(tiny_model.backbone.vision_backbone.trunk.blocks)
    assert list(compiled.state_dict()) == list(tiny_model.state_dict())  # names unchanged: checkpoints load
    loss_fn = build_sam3_loss(num_queries=20)
    batch = make_batch(112, 2, seed=0)
    losses, grads = [], []
    for model in (tiny_model, compiled):
        torch.manual_seed(0)
        loss = core_loss(compute_loss(model, loss_fn, batch))
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.reshape(-1) for p in lora_parameters(model)]))
    assert torch.allclose(losses[1], losses[0], rtol=1e-5), losses
    assert torch.allclose(grads[1], grads[0], rtol=1e-4, atol=1e-6 * grads[0].abs().max())
