"""Injection on the tiny SAM3: what it matches, what it refuses, and that it changes nothing at init."""

import pytest
import torch
from synthetic import final_outputs, make_batch
from torch import nn

from sam3_lora.lora import (
    LoraConfig,
    LoraConfigError,
    LoraLinear,
    LoraMultiheadAttention,
    base_fingerprint,
    count_trainable,
    inject_lora,
    lora_parameters,
)


def _outputs(model, batch):
    model.eval()
    with torch.no_grad():
        out = model(batch)
    return final_outputs(out)


def _expected_count(model, cfg: LoraConfig) -> int:
    """LoRA parameters computed independently from the module shapes: r * (in + out) per update."""
    r, total = cfg.rank, 0
    prefixes = {
        "vision": "backbone.vision_backbone.trunk.",
        "encoder": "transformer.encoder.",
        "decoder": "transformer.decoder.",
        "text": "backbone.language_backbone.encoder.",
        "geometry": "geometry_encoder.",
        "segmentation": "segmentation_head.",
    }
    qkv = [t for t in ("q_proj", "k_proj", "v_proj") if t in cfg.targets]
    for name, m in model.named_modules():
        if not any(name.startswith(prefixes[p]) for p in cfg.parts):
            continue
        if isinstance(m, nn.MultiheadAttention):
            e = m.embed_dim
            total += (len(qkv) + ("out_proj" in cfg.targets)) * r * 2 * e
        elif isinstance(m, nn.Linear) and not name.endswith("out_proj"):
            if name.endswith("attn.qkv"):
                total += len(qkv) * r * (m.in_features + m.out_features // 3)
            elif (
                (name.endswith("attn.proj") and "out_proj" in cfg.targets)
                or (name.endswith(("linear1", "mlp.fc1", "mlp.c_fc")) and "linear1" in cfg.targets)
                or (name.endswith(("linear2", "mlp.fc2", "mlp.c_proj")) and "linear2" in cfg.targets)
            ):
                total += r * (m.in_features + m.out_features)
    return total


@pytest.mark.parametrize(
    "cfg",
    [
        LoraConfig(rank=4, alpha=8, targets=["q_proj", "v_proj"], parts=["vision", "encoder", "decoder"]),
        LoraConfig(rank=8, alpha=16, parts=["vision", "encoder", "decoder"]),
        LoraConfig(rank=16, alpha=32, targets=["all"], parts=["all"]),
        LoraConfig(rank=2, alpha=2, targets=["k_proj", "linear2"], parts=["text", "geometry"]),
    ],
    ids=["minimal", "balanced", "full", "k_ffn2_text_geometry"],
)
def test_counts_match_module_shapes(tiny_model, cfg):
    expected = _expected_count(tiny_model, cfg)
    report = inject_lora(tiny_model, cfg)
    assert count_trainable(tiny_model) == expected
    assert sum(p.numel() for p in lora_parameters(tiny_model)) == expected
    # Every base parameter is frozen.
    lora_ids = {id(p) for p in lora_parameters(tiny_model)}
    assert all(not p.requires_grad for p in tiny_model.parameters() if id(p) not in lora_ids)
    assert len(report.targets) > 0


def test_fresh_injection_leaves_outputs_unchanged(tiny_model):
    batch = make_batch(112, 2)
    torch.manual_seed(0)
    before = _outputs(tiny_model, batch)
    inject_lora(tiny_model, LoraConfig(rank=8, alpha=16, targets=["all"], parts=["all"]))
    after = _outputs(tiny_model, batch)
    for key in ("pred_logits", "pred_boxes", "pred_masks"):
        torch.testing.assert_close(after[key], before[key], rtol=1e-5, atol=1e-5)


def test_vocabulary_maps_onto_sam3_modules(tiny_model):
    inject_lora(tiny_model, LoraConfig(rank=2, alpha=2, targets=["all"], parts=["all"]))
    get = tiny_model.get_submodule
    qkv = get("backbone.vision_backbone.trunk.blocks.0.attn.qkv")
    assert isinstance(qkv, LoraLinear) and list(qkv.slices) == ["q", "k", "v"]
    for name in (
        "backbone.vision_backbone.trunk.blocks.0.mlp.fc1",
        "backbone.language_backbone.encoder.transformer.resblocks.0.mlp.c_proj",
        "transformer.encoder.layers.0.linear1",
        "geometry_encoder.encode.0.linear2",
    ):
        assert isinstance(get(name), LoraLinear), name
    for name in (
        "backbone.language_backbone.encoder.transformer.resblocks.0.attn",
        "transformer.decoder.layers.0.self_attn",
        "transformer.decoder.layers.0.ca_text",
        "transformer.decoder.layers.0.cross_attn",
        "segmentation_head.cross_attend_prompt",
    ):
        m = get(name)
        assert isinstance(m, LoraMultiheadAttention) and set(m.lora) == {"q", "k", "v", "out"}, name
    # Heads outside the vocabulary stay stock.
    assert type(get("dot_prod_scoring.prompt_proj")) is nn.Linear


def test_regex_and_modules_to_save(tiny_model):
    cfg = LoraConfig(
        rank=2,
        alpha=2,
        targets=["q_proj"],
        parts=["decoder"],
        target_regex=r"^dot_prod_scoring\.(prompt|hs)_proj$",
        modules_to_save=["presence_token_head"],
    )
    report = inject_lora(tiny_model, cfg)
    assert isinstance(tiny_model.get_submodule("dot_prod_scoring.hs_proj"), LoraLinear)
    assert report.modules_to_save == ("transformer.decoder.presence_token_head",)
    head = tiny_model.get_submodule("transformer.decoder.presence_token_head")
    assert all(p.requires_grad for p in head.parameters())


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"targets": ["q_proj", "query"]}, r"unknown LoRA target 'query'; valid targets: q_proj, k_proj"),
        ({"parts": ["neck"]}, r"unknown LoRA part 'neck'; valid parts: vision, text"),
        ({"rank": 0}, r"lora.rank=0: a positive integer"),
        ({"rank": -4}, r"lora.rank=-4: a positive integer"),
        ({"alpha": 0}, r"lora.alpha=0: positive"),
        ({"dropout": 1.5}, r"lora.dropout=1.5: in \[0, 1\)"),
        ({"target_regex": "(["}, r"lora.target_regex='\(\[': not a valid regular expression"),
        ({"targets": []}, r"lora.targets=\[\]: empty, and no lora.target_regex is set"),
    ],
)
def test_bad_config_is_refused_with_choices(kwargs, message):
    with pytest.raises(LoraConfigError, match=message):
        LoraConfig(**kwargs)


@pytest.mark.parametrize(
    "cfg,message",
    [
        (LoraConfig(targets=["linear1"], parts=["segmentation"]), r"target\(s\) \['linear1'\] match no module"),
        (
            LoraConfig(targets=["q_proj"], target_regex="nothing_like_this"),
            r"target_regex 'nothing_like_this' matches no",
        ),
        (LoraConfig(modules_to_save=["no_such_module"]), r"modules_to_save entry 'no_such_module' names no module"),
    ],
)
def test_targets_matching_nothing_are_errors(tiny_model, cfg, message):
    with pytest.raises(LoraConfigError, match=message):
        inject_lora(tiny_model, cfg)


def test_fingerprint_is_stable_across_injection_and_differs_across_sizes(tiny_model):
    from sam3_lora.models import build_model

    before = base_fingerprint(tiny_model)
    inject_lora(tiny_model, LoraConfig())
    assert base_fingerprint(tiny_model) == before
    assert base_fingerprint(build_model("medium")) != before


def test_double_injection_is_refused(tiny_model):
    inject_lora(tiny_model, LoraConfig())
    with pytest.raises(RuntimeError, match="already has LoRA"):
        inject_lora(tiny_model, LoraConfig())
