"""Training, checkpointing, evaluation and resume on a CUDA GPU (`make test-gpu`).

Every test here carries the `cuda` marker: skipped with the reason on a machine without a
GPU (CI), run on one. The tiny model covers each trainable part in bf16 and fp16; the
full-size architecture (random weights) runs one step per setup at 1008 px and prints its
peak memory.
"""

import copy
import json

import pytest
import torch
from conftest import (
    compose_command,
    compose_train,
    tiny_run_overrides,
    train_in_process,
    train_interrupted_then_resumed,
)
from hydra.utils import instantiate
from safetensors.torch import load_file
from sam3.model.utils.misc import copy_data_to_device
from synthetic import final_outputs, lora_training_losses, make_batch, randomize_lora

from sam3_lora import evaluate as evaluate_cmd
from sam3_lora import predict as predict_cmd
from sam3_lora.lora import LoraConfig, inject_lora, merge_lora
from sam3_lora.lora.config import PARTS
from sam3_lora.models import build_model
from sam3_lora.speed.compiled_blocks import compile_vit_blocks
from sam3_lora.speed.frozen_precision import hold_frozen_weights_in
from sam3_lora.speed.text_cache import install_text_cache
from sam3_lora.training.loss import build_sam3_loss, compute_loss, core_loss

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")


def _batch(img_size: int, batch_size: int, seed: int = 0):
    return copy_data_to_device(make_batch(img_size, batch_size, seed=seed), CUDA, non_blocking=True)


def _trainable(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _train_until_a_step_is_taken(model, dtype, img_size: int = 112, batch_size: int = 2, max_tries: int = 17):
    """AdamW steps as the trainer takes them (autocast; fp16 with a default GradScaler, which
    skips steps whose scaled gradients overflow, halving its scale each time from 2**16)
    until the weights change; returns the losses."""
    trainable = _trainable(model)
    before = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    loss_fn = build_sam3_loss(model.transformer.decoder.num_queries)
    model.train()
    losses = []
    for step in range(max_tries):
        with torch.autocast("cuda", dtype=dtype):
            loss = core_loss(compute_loss(model, loss_fn, _batch(img_size, batch_size, seed=step)))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.detach())
        if any(not torch.equal(p, before[n]) for n, p in trainable.items()):
            return losses
    raise AssertionError(f"no step taken in {max_tries} tries ({dtype}); losses {[float(x) for x in losses]}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("part", [*PARTS, "none"], ids=[*PARTS, "lora=none"])
def test_tiny_training_step_trains_each_part(tiny_model, dtype, part):
    """Each part's LoRA in turn, and full fine-tuning (text encoder included, checkpointed)."""
    if part != "none":
        attention_only = ["q_proj", "k_proj", "v_proj", "out_proj"]  # the segmentation head has no FFN
        targets = attention_only if part == "segmentation" else ["all"]
        inject_lora(tiny_model, LoraConfig(rank=4, alpha=8, targets=targets, parts=[part]))
    tiny_model.to(CUDA)
    losses = _train_until_a_step_is_taken(tiny_model, dtype)
    assert torch.isfinite(torch.stack(losses)).all()
    if dtype == torch.bfloat16:
        assert len(losses) == 1  # no loss scaling in bf16: the first step counts
    assert all(torch.isfinite(p).all() for p in _trainable(tiny_model).values())


@pytest.mark.parametrize("where", ["vision", "text"])
def test_activation_checkpointing_gives_equal_gradients(tiny_model, where):
    """Full fine-tuning, fp32: gradients with the ViT's or the text encoder's checkpointing
    equal those without."""
    tiny_model.to(CUDA).train()
    trunk = tiny_model.backbone.vision_backbone.trunk
    text = tiny_model.backbone.language_backbone.encoder.transformer
    batch, loss_fn = _batch(112, 2), build_sam3_loss(20)

    def gradients(checkpointing: bool):
        trunk.use_act_checkpoint = checkpointing and where == "vision"
        text.grad_checkpointing = checkpointing and where == "text"
        tiny_model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        core_loss(compute_loss(tiny_model, loss_fn, batch)).backward()
        return {n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None}

    plain, recomputed = gradients(False), gradients(True)
    assert plain.keys() == recomputed.keys()
    for name in plain:  # fused attention backward kernels may sum in another order
        torch.testing.assert_close(recomputed[name], plain[name], rtol=1e-3, atol=1e-5, msg=name)


def test_merged_equals_unmerged_in_bf16(tiny_model):
    inject_lora(tiny_model, LoraConfig(rank=4, alpha=8, targets=["all"], parts=["all"]))
    randomize_lora(tiny_model)
    tiny_model.to(CUDA).eval()
    batch = _batch(112, 2, seed=9)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        unmerged = final_outputs(tiny_model(batch))
        merge_lora(tiny_model)
        merged = final_outputs(tiny_model(batch))
    for key in ("pred_logits", "pred_boxes", "pred_masks"):
        a, b = merged[key].float(), unmerged[key].float()
        err = (a - b).abs().max() / b.abs().max()
        assert err < 3e-2, (key, float(err))  # bf16 rounds to 3 significant digits


@pytest.fixture(scope="module")
def cuda_run(toy_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cuda_run")
    summary = train_in_process(
        tiny_run_overrides(toy_root, "trainer.max_epochs=2", "trainer.device=cuda", "lora.targets=[all]"), run_dir
    )
    return run_dir, summary


def test_training_run_evaluate_and_predict_on_cuda(cuda_run, toy_root, tmp_path):
    run_dir, summary = cuda_run
    assert summary["peak_memory_gb"] > 0 and torch.cuda.max_memory_allocated() > 0
    result = evaluate_cmd.evaluate(compose_command("evaluate", run_dir=run_dir, num_workers=0, device="cuda"))
    final = json.loads((run_dir / "results.json").read_text())["results"]["lora"]
    # The same model and data as training's final evaluation, on the same device.
    assert result["metrics"]["segm/AP"] == pytest.approx(final["segm/AP"], abs=1e-3)
    out = predict_cmd.run(
        compose_command(
            "predict",
            run_dir=run_dir,
            images=toy_root / "test",
            score_threshold=0.0,
            max_dets=3,
            device="cuda",
            output=tmp_path / "pred",
        )
    )
    assert len(list(out.glob("*_overlay.png"))) == 4
    assert len(json.loads((out / "predictions.coco.json").read_text())["annotations"]) == 12


def test_resumed_run_on_cuda_matches_an_uninterrupted_one(toy_root, tmp_path, monkeypatch):
    extra = ("trainer.max_epochs=3", "lora.dropout=0.1", "trainer.device=cuda")  # dropout: CUDA RNG resumes too
    train_in_process(tiny_run_overrides(toy_root, *extra), tmp_path / "straight")
    train_interrupted_then_resumed(tiny_run_overrides(toy_root, *extra), tmp_path / "resumed", monkeypatch)

    a = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    b = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert [m["step"] for m in a] == [m["step"] for m in b] == [1, 2, 3]
    for x, y in zip(a, b):  # GPU kernels may accumulate in another order between runs
        assert x["segm/AP"] == pytest.approx(y["segm/AP"], abs=2e-2)
    wa = load_file(tmp_path / "straight" / "adapter_last.safetensors")
    wb = load_file(tmp_path / "resumed" / "adapter_last.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-4)


@pytest.fixture(scope="module")
def full_base_state():
    torch.manual_seed(0)
    return build_model("sam3", random_init=True).state_dict()


@pytest.mark.parametrize("preset", ["balanced", "full", "none"])
def test_full_size_training_step_at_1008px(full_base_state, preset, capsys):
    """The 840M architecture, batch 1 at 1008 px, bf16: one AdamW step per setup."""
    model = build_model("sam3", random_init=True)
    model.load_state_dict(full_base_state)
    if preset != "none":
        inject_lora(model, instantiate(compose_train([f"lora={preset}"]).lora).config)
    model.to(CUDA)
    torch.cuda.reset_peak_memory_stats()
    losses = _train_until_a_step_is_taken(model, torch.bfloat16, img_size=1008, batch_size=1)
    assert len(losses) == 1 and torch.isfinite(losses[0])
    peak = torch.cuda.max_memory_allocated() / 2**30
    trainable = sum(p.numel() for p in _trainable(model).values())
    with capsys.disabled():
        print(
            f"\n[full-size 1008 px, batch 1, bf16] lora={preset}: {trainable / 1e6:.2f}M trainable, peak {peak:.1f} GB"
        )


# ------------------------------------------------------------------ speed levers on CUDA (issue: GPU speed)
def _bf16_losses(model):
    return lora_training_losses(model, steps=2, lr=1e-4, device=CUDA, bf16=True)


def test_text_cache_on_cuda_gives_the_stock_losses(tiny_model):
    inject_lora(tiny_model, LoraConfig(rank=4, alpha=8, parts=["vision", "encoder", "decoder"]))
    tiny_model.to(CUDA).train()
    cached = copy.deepcopy(tiny_model)
    cache = install_text_cache(cached)
    want, got = _bf16_losses(tiny_model), _bf16_losses(cached)
    assert cache.hits > 0
    # bit-identical where the kernels are; a batch of other size may round a row differently
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)


def test_bf16_base_on_cuda_trains_within_tolerance(tiny_model):
    # also covers sam3's decoder FFN, which runs with CUDA autocast switched off (left in fp32)
    inject_lora(tiny_model, LoraConfig(rank=4, alpha=8, targets=["all"], parts=["all"]))
    tiny_model.to(CUDA).train()
    bf16 = copy.deepcopy(tiny_model)
    hold_frozen_weights_in(bf16, torch.bfloat16)
    want, got = _bf16_losses(tiny_model), _bf16_losses(bf16)
    assert torch.allclose(got[0], want[0], rtol=2e-3) and torch.allclose(got, want, rtol=1e-2), (got, want)


def test_compiled_vit_blocks_on_cuda_match_eager(tiny_model):
    inject_lora(tiny_model, LoraConfig(rank=4, alpha=8, parts=["vision"]))
    randomize_lora(tiny_model)
    tiny_model.to(CUDA).eval()
    compiled = copy.deepcopy(tiny_model)
    compile_vit_blocks(compiled)
    batch = _batch(112, 2)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        a, b = final_outputs(tiny_model(batch)), final_outputs(compiled(batch))
    for key in ("pred_logits", "pred_boxes", "pred_masks"):
        torch.testing.assert_close(b[key].float(), a[key].float(), rtol=2e-2, atol=2e-2)


def test_full_size_levers_train_at_1008px(full_base_state, capsys):
    """LoRA balanced with text cache + bf16 base + ViT act. ckpt at batch 1: its peak memory."""
    model = build_model("sam3", random_init=True)
    model.load_state_dict(full_base_state)
    inject_lora(model, instantiate(compose_train(["lora=balanced"]).lora).config)
    hold_frozen_weights_in(model, torch.bfloat16)
    install_text_cache(model)
    model.backbone.vision_backbone.trunk.use_act_checkpoint = True
    model.to(CUDA)
    torch.cuda.reset_peak_memory_stats()
    losses = _train_until_a_step_is_taken(model, torch.bfloat16, img_size=1008, batch_size=1)
    assert torch.isfinite(losses[0])
    with capsys.disabled():
        print(
            f"\n[full-size 1008 px, batch 1, levers + act. ckpt] peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GB"
        )
