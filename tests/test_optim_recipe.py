"""Meta's SAM3 fine-tuning recipe (RF100-VL / ODinW) in our optimizer and scheduler groups:
optimizer=meta_transfer and scheduler=inverse_sqrt give every parameter the learning rate and weight
decay that sam3's own training code (``sam3.train.optim``) gives it, step by step."""

import sys
import types
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sam3_lora.pipeline.settings import ConfigError, check_settings, compose
from sam3_lora.training.optim import NORM_PARAMETERS, InverseSqrt, layer_decay_factors, parameter_groups

optimizer_mod = pytest.importorskip("sam3.train.optim.optimizer")
schedulers_mod = pytest.importorskip("sam3.train.optim.schedulers")
vitdet = pytest.importorskip("sam3.model.vitdet")

TRUNK = "backbone.vision_backbone.trunk"
TOTAL = 100  # optimizer steps of the compared runs


class _ConstantParamScheduler:
    """fvcore's ConstantParamScheduler (fvcore is not installed here): its value wherever in training."""

    def __init__(self, value):
        self.value = value

    def __call__(self, where):
        return self.value


@pytest.fixture
def fvcore(monkeypatch):
    """The fvcore module path Meta's configs name for a constant weight decay."""
    root, common, sched = (types.ModuleType(n) for n in ("fvcore", "fvcore.common", "fvcore.common.param_scheduler"))
    sched.ConstantParamScheduler = _ConstantParamScheduler
    root.common, common.param_scheduler = common, sched
    for module in (root, common, sched):
        monkeypatch.setitem(sys.modules, module.__name__, module)


def _inverse_sqrt(base_lr):
    # scratch.scheduler_* of the RF100 / ODinW configs
    return {
        "_target_": "sam3.train.optim.schedulers.InverseSquareRootParamScheduler",
        "base_lr": base_lr,
        "timescale": 20,
        "warmup_steps": 20,
        "cooldown_steps": 20,
    }


def _constant(value):
    return {"_target_": "fvcore.common.param_scheduler.ConstantParamScheduler", "value": value}


# trainer.optim of roboflow_v100_full_ft_100_images.yaml (L340-395), its ${scratch.*} values filled in.
META_OPTIONS = {
    "lr": [
        {"scheduler": _inverse_sqrt(8e-4 * 0.1)},
        {"scheduler": _inverse_sqrt(2.5e-4 * 0.1), "param_names": ["backbone.vision_backbone.*"]},
        {"scheduler": _inverse_sqrt(5e-5 * 0.1), "param_names": ["backbone.language_backbone.*"]},
    ],
    "weight_decay": [
        {"scheduler": _constant(0.1)},
        {"scheduler": _constant(0.0), "param_names": ["*bias*"], "module_cls_names": ["torch.nn.LayerNorm"]},
    ],
}
META_MODIFIER = {
    "_target_": "sam3.train.optim.optimizer.layer_decay_param_modifier",
    "_partial_": True,
    "layer_decay_value": 0.9,
    "apply_to": TRUNK,
    "overrides": [{"pattern": "*pos_embed*", "value": 1.0}],
}


def _meta_optimizer(model, trainable):
    """sam3's own optimizer over ``model``, built as its Trainer._construct_optimizers does (the whole
    model; with LoRA, the trainable names as its allowlist)."""
    everything = len(trainable) == len(list(model.parameters()))
    options = OmegaConf.create(META_OPTIONS)
    if not everything:  # LoRA trains no bias or LayerNorm, and sam3's refuses a rule that matches nothing
        options.weight_decay = options.weight_decay[:1]
    return optimizer_mod.construct_optimizer(
        model,
        OmegaConf.create({"_target_": "torch.optim.AdamW"}),
        options,
        [OmegaConf.create(META_MODIFIER)],
        param_allowlist=None if everything else set(trainable),
        validate_param_groups=everything,
    )


def _per_parameter(groups, names, value):
    """{parameter name: value(group)} over an optimizer's groups; each parameter in exactly one."""
    out = {}
    for group in groups:
        for p in group["params"]:
            assert names[id(p)] not in out, names[id(p)]
            out[names[id(p)]] = value(group)
    return out


def _with_lora(model):
    from sam3_lora.lora.inject import inject_lora

    inject_lora(model, instantiate(compose("train", ["lora=full"]).lora).config)
    return model


@pytest.mark.parametrize("lora", [False, True], ids=["full_finetune", "lora_full"])
def test_meta_transfer_gives_every_parameter_sam3s_own_lr_and_weight_decay(tiny_model, fvcore, lora):
    model = _with_lora(tiny_model) if lora else tiny_model
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}  # what our trainer passes
    names = {id(p): n for n, p in trainable.items()}
    meta = _meta_optimizer(model, trainable)

    cfg = compose("train", ["optimizer=meta_transfer", "scheduler=inverse_sqrt"])
    ours = instantiate(cfg.optimizer)(list(trainable.items()))
    schedule = instantiate(cfg.scheduler)(ours, total_steps=TOTAL)

    ours_wd = _per_parameter(ours.param_groups, names, lambda g: g["weight_decay"])
    assert set(ours_wd) == set(trainable)
    for step in (0, 1, 10, 20, 21, 40, 79, 85, 99):  # warmup, its end, decay, cooldown, the last step
        meta.step_schedulers(where=step / TOTAL, step=step)  # as sam3's Trainer before each update
        meta_lr = _per_parameter(meta.optimizer.param_groups, names, lambda g: g["lr"])
        ours_lr = _per_parameter(
            ours.param_groups, names, lambda g: g["initial_lr"] * schedule.lr_lambdas[0](step)
        )
        assert set(meta_lr) == set(trainable)
        close = {n: ours_lr[n] == pytest.approx(meta_lr[n], rel=1e-9, abs=0) for n in trainable}
        wrong = {n: (ours_lr[n], meta_lr[n]) for n, ok in close.items() if not ok}
        assert not wrong, f"step {step}: (ours, sam3's) lr differ for {wrong}"
    meta_wd = _per_parameter(meta.optimizer.param_groups, names, lambda g: g["weight_decay"])
    assert ours_wd == meta_wd

    # the recipe's distinct rates all occur (full fine-tuning): not a comparison of empty groups
    if not lora:
        base = {n: g["initial_lr"] for g in ours.param_groups for n in (names[id(p)] for p in g["params"])}
        assert base[f"{TRUNK}.pos_embed"] == pytest.approx(2.5e-5)  # overridden to the trunk's full lr
        assert base[f"{TRUNK}.blocks.1.attn.qkv.weight"] == pytest.approx(2.5e-5 * 0.9)  # the last of 2 blocks
        assert base[f"{TRUNK}.blocks.0.attn.qkv.weight"] == pytest.approx(2.5e-5 * 0.9**2)
        assert base[f"{TRUNK}.patch_embed.proj.weight"] == pytest.approx(2.5e-5 * 0.9**3)
        assert base["backbone.vision_backbone.convs.0.conv_1x1.weight"] == pytest.approx(2.5e-5)  # neck: no decay
        assert base["backbone.language_backbone.encoder.token_embedding.weight"] == pytest.approx(5e-6)
        assert base["transformer.decoder.query_embed.weight"] == pytest.approx(8e-5)
        assert ours_wd[f"{TRUNK}.pos_embed"] == 0.1 and ours_wd[f"{TRUNK}.ln_pre.weight"] == 0.0
        assert ours.param_groups[0]["lr"] == pytest.approx(8e-5 * schedule.lr_lambdas[0](0))  # logged: the base


def test_the_norm_pattern_names_exactly_the_layernorms_parameters(tiny_model):
    import re

    rx = re.compile(NORM_PARAMETERS)
    layernorm = {
        f"{module_name}.{name}"
        for module_name, module in tiny_model.named_modules()
        if type(module) is torch.nn.LayerNorm  # the class Meta's recipe names (module_cls_names)
        for name, _ in module.named_parameters(recurse=False)
    }
    matched = {n for n, _ in tiny_model.named_parameters() if rx.search(n)}
    assert matched == layernorm
    groupnorm = [n for n, m in tiny_model.named_modules() if isinstance(m, torch.nn.GroupNorm)]
    assert groupnorm and not any(f"{g}.weight" in matched for g in groupnorm)  # decayed, as in Meta's


def test_layer_ids_follow_sam3s_vit_and_modifier_on_any_names():
    """Names the tiny model lacks (rel_pos tables, cls_token, deep blocks), through sam3's own
    ViT.get_layer_id and layer_decay_param_modifier on a stand-in holding only what they read."""
    blocks = 12
    trunk = SimpleNamespace(get_num_layers=lambda: blocks)
    trunk.get_layer_id = lambda name: vitdet.ViT.get_layer_id(trunk, name)
    model = SimpleNamespace(backbone=SimpleNamespace(vision_backbone=SimpleNamespace(trunk=trunk)))
    names = [
        f"{TRUNK}.{rest}"
        for rest in (
            "pos_embed",
            "cls_token",
            "patch_embed.proj.weight",
            "ln_pre.bias",
            "blocks.0.norm1.weight",
            "blocks.3.attn.rel_pos_h",
            "blocks.10.mlp.fc1.weight",
            "blocks.11.attn.qkv.lora.q.lora_A",
            "norm.weight",
        )
    ] + ["backbone.vision_backbone.convs.0.conv_1x1.weight", "transformer.decoder.norm.bias"]
    for overrides in ([], [("*pos_embed*", 1.0), ("*blocks.10.*", 0.5), ("*blocks.1*", 2.0)]):
        cfgs = [[{"option": "lr", "scheduler": _ConstantParamScheduler(1.0), "parameter_names": set(names)}]]
        out = optimizer_mod.layer_decay_param_modifier(
            cfgs, model, 0.9, apply_to=TRUNK, overrides=[{"pattern": p, "value": v} for p, v in overrides]
        )
        meta = {n: cfg["scheduler"].mult_val for cfg in out[0] for n in cfg["parameter_names"]}
        ours = layer_decay_factors(names, 0.9, TRUNK, overrides, num_blocks=blocks)
        assert ours == meta, overrides
    # counted from the names when not given: the highest block here is 11
    assert layer_decay_factors(names, 0.9, TRUNK) == layer_decay_factors(names, 0.9, TRUNK, num_blocks=blocks)


def _meta_trainer_steps(iters_per_epoch, max_epochs):
    """(step, where) as sam3's Trainer passes them to its schedulers, once per update."""
    for epoch in range(max_epochs):
        for data_iter in range(iters_per_epoch):
            exact_epoch = epoch + float(data_iter) / iters_per_epoch
            where = float(exact_epoch) / max_epochs
            if where < 1.0:
                yield int(exact_epoch * iters_per_epoch), where


@pytest.mark.parametrize(
    "timescale, warmup, cooldown, iters_per_epoch, epochs",
    [(20, 20, 20, 10, 6), (10, 5, 7, 8, 5), (3, 0, 0, 7, 5), (20, 0, 30, 10, 6)],
)
def test_inverse_sqrt_is_sam3s_schedule_at_every_step(timescale, warmup, cooldown, iters_per_epoch, epochs):
    total = iters_per_epoch * epochs
    meta = schedulers_mod.InverseSquareRootParamScheduler(1.0, warmup, cooldown, timescale)
    ours = InverseSqrt(total, timescale, warmup, cooldown)
    steps = list(_meta_trainer_steps(iters_per_epoch, epochs))
    assert [s for s, _ in steps] == list(range(total))  # its k-th update is our optimizer step k
    for step, where in steps:
        if step == 0 and not warmup and cooldown:
            # at where=0 sam3's gives the run no length: the first update at 1/cooldown of the rate; ours full
            assert meta(step=0, where=0.0) == pytest.approx(1 / cooldown) and ours(0) == 1.0
            continue
        assert ours(step) == pytest.approx(meta(step=step, where=where), rel=1e-12, abs=1e-15), step

    # through the config group and LambdaLR, as our trainer steps it: the k-th update at factor(k), and
    # the rate after the last update kept (sam3's trainer skips the update at the end)
    param = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([param], lr=0.5)
    overrides = [
        f"scheduler.timescale={timescale}",
        f"scheduler.warmup_steps={warmup}",
        f"scheduler.cooldown_steps={cooldown}",
    ]
    schedule = instantiate(compose("train", ["scheduler=inverse_sqrt", *overrides]).scheduler)(opt, total_steps=total)
    used = []
    for _ in range(total):
        used.append(opt.param_groups[0]["lr"])
        param.grad = torch.zeros(2)
        opt.step()
        schedule.step()
    assert used == pytest.approx([0.5 * ours(k) for k in range(total)])
    assert opt.param_groups[0]["lr"] == pytest.approx(used[-1])


def _named(n=6):
    return [(f"m{i}.weight" if i % 2 else f"m{i}.bias", torch.nn.Parameter(torch.zeros(1))) for i in range(n)]


def test_without_the_new_settings_the_groups_are_as_before(tiny_model):
    named = list(tiny_model.named_parameters())
    params = [p for _, p in named]
    # one group, as a plain torch.optim class makes
    ours = instantiate(compose("train", ["optimizer=adamw"]).optimizer)(named)
    plain = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, betas=(0.9, 0.999), fused=True)
    assert len(ours.param_groups) == 1 and ours.param_groups[0]["params"] == params
    assert {k: v for k, v in ours.param_groups[0].items() if k != "params"} == {
        k: v for k, v in plain.param_groups[0].items() if k != "params"
    }
    assert parameter_groups(named, 1e-3) == [{"params": params}]
    # lr_scales alone: the rest at lr, then one group per pattern, labelled by it
    seg = [p for n, p in named if n.startswith("segmentation_head")]
    rest = [p for n, p in named if not n.startswith("segmentation_head")]
    assert parameter_groups(named, 1e-3, [["segmentation_head", 10.0]]) == [
        {"params": rest},
        {"params": seg, "lr": 1e-3 * 10.0, "group": "segmentation_head"},
    ]
    # settings that change nothing keep it so
    idle = parameter_groups(named, 1e-3, [], {"value": 1.0, "overrides": []}, {"names": [], "norms": False})
    assert idle == [{"params": params}]


def test_groups_combine_lr_scales_layer_decay_and_no_weight_decay():
    names = ["t.blocks.0.w", "t.blocks.0.bias", "t.blocks.1.w", "head.w", "head.bias", "x.norm.weight"]
    named = [(n, torch.nn.Parameter(torch.zeros(1))) for n in names]
    groups = parameter_groups(
        named, 1.0, [["^head", 4.0]], {"value": 0.5, "prefix": "t", "overrides": []}, {"names": ["bias"], "norms": True}
    )
    by_name = {}
    for g in groups:
        for p in g["params"]:
            by_name[next(n for n, q in named if q is p)] = (g.get("lr", 1.0), g.get("weight_decay", "default"))
    assert by_name == {
        "t.blocks.0.w": (0.25, "default"),  # block 0 of 2
        "t.blocks.0.bias": (0.25, 0.0),
        "t.blocks.1.w": (0.5, "default"),
        "head.w": (4.0, "default"),
        "head.bias": (4.0, 0.0),
        "x.norm.weight": (1.0, 0.0),
    }


@pytest.mark.parametrize(
    "override, says",
    [
        ("optimizer.layer_decay.value=0", r"optimizer\.layer_decay\.value=0: a factor in \(0, 1\]"),
        ("optimizer.layer_decay.value=1.5", r"optimizer\.layer_decay\.value=1\.5: a factor in \(0, 1\]"),
        ("optimizer.no_weight_decay.names=['(bias']", r"optimizer\.no_weight_decay\.names=.*regular expressions"),
        ("optimizer.layer_decay.overrides=[['*pos*',-1]]", r"optimizer\.layer_decay\.overrides=.*factor > 0"),
        ("optimizer.layer_decay.num_blocks=0", r"optimizer\.layer_decay\.num_blocks=0: an integer >= 1"),
        ("scheduler.timescale=0", r"scheduler\.timescale=0: a positive step count"),
        ("scheduler.cooldown_steps=-1", r"scheduler\.cooldown_steps=-1: an integer >= 0"),
    ],
)
def test_bad_recipe_values_are_refused_naming_the_key(tmp_path, override, says):
    base = ["model=sam3_tiny", "dataset=toy", f"dataset.root={tmp_path}"]
    base += ["optimizer=meta_transfer", "scheduler=inverse_sqrt"]
    check_settings(compose("train", base))  # the recipe itself is valid
    with pytest.raises(ConfigError, match=says):
        check_settings(compose("train", [*base, override]))


def test_the_factory_refuses_bad_values_from_python_too():
    with pytest.raises(ValueError, match=r"optimizer\.layer_decay\.value=0: a factor in \(0, 1\]"):
        parameter_groups(_named(), 1e-3, layer_decay={"value": 0})
    with pytest.raises(ValueError, match=r"optimizer\.no_weight_decay\.names=.*regular expressions"):
        parameter_groups(_named(), 1e-3, no_weight_decay={"names": ["[unclosed"]})
    with pytest.raises(ValueError, match=r"optimizer\.layer_decay\.num_blocks=1: .*reach block 3"):
        layer_decay_factors(["t.blocks.3.w"], 0.9, "t", num_blocks=1)
