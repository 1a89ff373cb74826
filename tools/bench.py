"""Benchmark: what LoRA saves over full fine-tuning and how it compares with PEFT, in one run.

    python tools/bench.py                          # the medium CPU model (default)
    python tools/bench.py --model sam3_tiny --steps 5 --warmup 2
    python tools/bench.py --model sam3 --batch 1   # the full 1008 px SAM3 (on a GPU)

On the same model, batch and machine it measures
* training step time (median over --steps after --warmup) and peak memory above the
  model's own footprint (GPU: max allocated; CPU: peak RSS, sampled) for full fine-tuning,
  each LoRA preset, balanced with ViT activation checkpointing, and Hugging Face PEFT's
  LoRA on the same targets where PEFT can express them (nn.Linear updates);
* inference time for the base model, LoRA unmerged and LoRA merged;
* data-loader images/s at the trainer's default worker count against the images/s a
  LoRA training step consumes;
* the cached trunk: LoRA heads with and without it against LoRA balanced, epochs after the
  first, and the validation forward with and without it;
* distillation from the base: a step on b labelled + b anchor images against one on 2b labelled.
Each training setup runs in a fresh process, so memory peaks do not mix. Prints a
Markdown table and writes JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

PRESETS = ("minimal", "balanced", "full")
ALL_LEVERS = "LoRA balanced + text cache + bf16 base + compiled ViT"
RESULTS_DIR = Path(__file__).resolve().parent / "bench_results"
# Targets PEFT can hold exactly like ours: every nn.Linear update of the balanced preset
# (PEFT's nn.MultiheadAttention support is experimental; see sam3_lora/lora/peft_format.py).
LINEAR_BALANCED = {"targets": ["all"], "parts": ["vision"], "rank": 8, "alpha": 16.0}
OURS_LINEAR = "ours: LoRA r8 on the vision backbone's Linear layers (q, k, v slices of qkv)"
PEFT_EQUAL = "PEFT: same modules, equal capacity (r24 on packed qkv, as our PEFT export)"
PEFT_SAME_R = "PEFT: same modules, r8 on the whole qkv (fewer parameters)"


# ----------------------------------------------------------------------------- shared setup
def build(model_name: str):
    """``sam3`` (the stock 840M model, random weights), ``sam3_medium``, ``sam3_tiny``; ``NAME@SIZE``: that
    architecture at another input size (e.g. ``sam3@336``: the stock trunk and heads on a CPU budget)."""
    from sam3_lora.models import build_model

    torch.manual_seed(0)
    name, _, size = model_name.partition("@")
    size_name = "full" if name == "sam3" else name.removeprefix("sam3_")
    if size:
        return build_model(size_name, overrides={"img_size": int(size)})
    if name == "sam3":
        return build_model("sam3", random_init=True)
    return build_model(size_name)


def model_name(value: str) -> str:
    name, _, size = value.partition("@")
    if name not in ("sam3_tiny", "sam3_medium", "sam3") or (size and not size.isdigit()):
        raise argparse.ArgumentTypeError(f"{value!r}: one of sam3_tiny, sam3_medium, sam3, optionally @SIZE")
    return value


def toy_split(root: Path):
    from sam3_lora.data import toy
    from sam3_lora.data.config import Split

    toy.ensure(root, "shifted", seed=0, splits={"train": 64, "valid": 0, "test": 0})
    return Split(str(root / "train" / toy.ANNOTATIONS), str(root / "train"))


def batches(model, split, batch_size: int, count: int):
    from sam3_lora.data.sam3_dataset import build_dataset, build_loader

    loader = build_loader(build_dataset(split, model.image_size, training=True), batch_size, True, num_workers=0)
    out = []
    while len(out) < count:
        out.extend(b for b, _ in zip(loader, range(count - len(out))))
    return out


def lora_config(preset: str):
    from hydra.utils import instantiate

    from sam3_lora.pipeline.settings import compose

    cfg = compose("train", [f"lora={preset}", "lora.dropout=0"])
    return instantiate(cfg.lora).config  # the LoRA method's settings


class PeakMemory:
    """Peak memory above the level at entry: CUDA's allocator counter, or sampled RSS on CPU."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            import psutil

            proc = psutil.Process()
            self.base = proc.memory_info().rss
            self.thread = threading.Thread(target=self._sample, args=(proc,), daemon=True)
            self.thread.start()
        return self

    def _sample(self, proc):
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss - self.base)
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.total = torch.cuda.max_memory_allocated()
            self.peak = self.total - self.base
        else:
            self._stop.set()
            self.thread.join()
            self.total = self.base + self.peak


def _autocast(device):
    """bf16 on CUDA (the trainer's amp=auto); fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _train_step(model, loss_fn, opt, batch, amp, extra_loss=None) -> None:
    """One optimizer step on the labelled loss (what every training row times); ``extra_loss()``, if
    given, is backpropagated after it, before the step (as the trainer does with distillation)."""
    from sam3_lora.training.loss import compute_loss, core_loss

    opt.zero_grad(set_to_none=True)
    with amp:
        loss = core_loss(compute_loss(model, loss_fn, batch))
    loss.backward()
    if extra_loss is not None:
        with amp:
            extra = extra_loss()
        extra.backward()
    opt.step()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- child: one training setup
def train_setup(spec: dict) -> dict:
    """Median step time and peak memory of one setup; run in its own process."""
    from sam3_lora.lora import count_trainable, inject_lora
    from sam3_lora.sam3_compat.module_paths import trunk_of
    from sam3_lora.training.loss import build_sam3_loss

    device = torch.device(spec["device"])
    model = build(spec["model"]).to(device).train()
    kind = spec["kind"]
    if kind == "lora":
        inject_lora(model, lora_config(spec["preset"]) if "preset" in spec else _config(spec["lora"]))
    elif kind == "peft":
        _inject_peft(model, spec["lora"], spec.get("equal_capacity", False))
    trunk = trunk_of(model)
    trunk.use_act_checkpoint = spec.get("act_ckpt", False)
    apply_levers(model, spec)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    loss_fn = build_sam3_loss(model.transformer.decoder.num_queries)
    data = batches(model, toy_split(Path(spec["data"])), spec["batch"], spec["warmup"] + spec["steps"])
    amp = _autocast(device)
    from sam3.model.utils.misc import copy_data_to_device

    times = []
    with PeakMemory(device) as mem:
        for i, batch in enumerate(data):
            batch = copy_data_to_device(batch, device) if device.type == "cuda" else batch
            _sync(device)
            t = time.perf_counter()
            _train_step(model, loss_fn, opt, batch, amp)
            _sync(device)
            if i >= spec["warmup"]:
                times.append(time.perf_counter() - t)
    step = statistics.median(times)
    return {
        "step_s": step,
        "images_per_s": spec["batch"] / step,
        "peak_mem_mb": mem.peak / 2**20,
        "peak_total_mb": mem.total / 2**20,  # the model's own weights included
        "trainable": count_trainable(model),
    }


def apply_levers(model, spec: dict) -> None:
    """The speed levers as the trainer applies them (trainer.text_cache / base_dtype / compile)."""
    from sam3_lora.speed.levers import apply_speed_levers

    apply_speed_levers(
        model,
        text_cache=spec.get("text_cache", False),
        base_dtype=torch.bfloat16 if spec.get("bf16_base") else None,
        compile=spec.get("compile", False),
    )


def _config(d: dict):
    from sam3_lora.lora import LoraConfig

    return LoraConfig(**{"dropout": 0.0, **d})


def _inject_peft(model, lora: dict, equal_capacity: bool):
    """PEFT's LoRA on exactly the nn.Linear modules our config adapts (whole-weight updates).

    ``equal_capacity``: rank n*r on a packed weight whose n slices we adapt with rank r each,
    as our exact PEFT export writes it; otherwise rank r everywhere (fewer parameters).
    """
    import peft

    from sam3_lora.lora.layers import LoraLinear
    from sam3_lora.lora.targets import plan_targets

    plan = plan_targets(model, _config(lora))
    targets = sorted(plan.linear)
    r = lora["rank"]
    ranks = {n: r * len(s) for n, s in plan.linear.items() if len(s) > 1} if equal_capacity else {}
    alphas = {n: lora["alpha"] / r * k for n, k in ranks.items()}
    cfg = peft.LoraConfig(
        r=r,
        lora_alpha=lora["alpha"],
        target_modules=targets,
        lora_dropout=0.0,
        rank_pattern=ranks,
        alpha_pattern=alphas,
    )
    peft.inject_adapter_in_model(cfg, model)
    assert not any(isinstance(m, LoraLinear) for m in model.modules())
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)


# ----------------------------------------------------------------------------- parent: inference and data
def inference(model_name: str, device, batch_size: int, warmup: int, steps: int, data_root: Path) -> dict:
    """Forward time of the base, LoRA unmerged and LoRA merged, interleaved round by round so
    that drift in the machine's speed hits all three alike."""
    import copy

    from sam3.model.utils.misc import copy_data_to_device

    from sam3_lora.lora import LoraDelta, inject_lora, merge_lora, unmerge_lora
    from sam3_lora.speed.text_cache import install_text_cache

    base = build(model_name).to(device).eval().requires_grad_(False)
    install_text_cache(base)  # as evaluate and predict run (a frozen model encodes each prompt once)
    lora = copy.deepcopy(base)
    inject_lora(lora, lora_config("balanced"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero updates, as after training
        for m in lora.modules():
            if isinstance(m, LoraDelta):
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g).to(m.lora_B) * 0.01)
    lora.eval()
    data = batches(base, toy_split(data_root), batch_size, 1)
    batch = copy_data_to_device(data[0], device) if device.type == "cuda" else data[0]

    amp = _autocast(device)

    def once(model) -> float:
        _sync(device)
        t = time.perf_counter()
        with torch.no_grad(), amp:
            model(batch)
        _sync(device)
        return time.perf_counter() - t

    for model in (base, lora):
        for _ in range(warmup):
            once(model)
    times = {"base_s": [], "unmerged_s": [], "merged_s": []}
    for _ in range(steps):
        times["base_s"].append(once(base))
        times["unmerged_s"].append(once(lora))
        merge_lora(lora)
        times["merged_s"].append(once(lora))
        unmerge_lora(lora)
    return {k: statistics.median(v) for k, v in times.items()}


def text_cache_ab(model_name: str, device, batch_size: int, warmup: int, steps: int, data_root: Path) -> dict:
    """The text cache's effect on a LoRA balanced training step, measured in one process: the same
    model and batches, steps alternating between the stock text encoder and the cached one, so the
    machine's drift (on a shared CPU, +-20% between processes run one after another) hits both alike.
    Also the text encoder's own time per call, stock and cached."""
    from sam3.model.utils.misc import copy_data_to_device

    from sam3_lora.lora import inject_lora, lora_parameters
    from sam3_lora.sam3_compat.module_paths import text_backbone_of
    from sam3_lora.speed.text_cache import install_text_cache, remove_text_cache
    from sam3_lora.training.loss import build_sam3_loss

    model = build(model_name).to(device).train()
    inject_lora(model, lora_config("balanced"))
    loss_fn = build_sam3_loss(model.transformer.decoder.num_queries)
    opt = torch.optim.AdamW(lora_parameters(model), lr=1e-4)
    data = [
        copy_data_to_device(b, device) if device.type == "cuda" else b
        for b in batches(model, toy_split(data_root), batch_size, 4)
    ]
    amp = _autocast(device)

    def timed(fn) -> float:
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - t

    def step(batch) -> None:
        _train_step(model, loss_fn, opt, batch, amp)

    encoder, prompts = text_backbone_of(model), data[0].find_text_batch
    encode = lambda: encoder(prompts, None, device=device)  # noqa: E731
    times = {"stock": [], "cached": [], "encoder_stock": [], "encoder_cached": []}
    for i in range(warmup + steps):
        for mode in ("stock", "cached"):
            install_text_cache(model) if mode == "cached" else remove_text_cache(model)
            encode()  # a cached prompt is encoded once, here
            t_enc = timed(encode)
            t_step = sum(timed(lambda b=b: step(b)) for b in data)
            if i >= warmup:
                times[mode].append(t_step / len(data))
                times[f"encoder_{mode}"].append(t_enc)
    remove_text_cache(model)
    m = {k: statistics.median(v) for k, v in times.items()}
    return {
        "stock_step_s": m["stock"],
        "cached_step_s": m["cached"],
        "ratio": m["cached"] / m["stock"],
        "encoder_stock_s": m["encoder_stock"],
        "encoder_cached_s": m["encoder_cached"],
        "steps": steps * len(data),
    }


def trunk_cache_ab(model_name: str, device, batch_size: int, warmup: int, steps: int, data_root: Path) -> dict:
    """The cached trunk (sam3_lora/speed/trunk_cache.py) in epochs after the first, in one process: LoRA
    balanced (its trunk trains: no cache), LoRA heads uncached and LoRA heads cached, their steps
    interleaved round by round over the same batches so the machine's drift hits all three alike; and
    the heads model's validation forward (no grad, eval mode) uncached and cached. Both models have the
    text cache, as in training."""
    from sam3.model.utils.misc import copy_data_to_device

    from sam3_lora.lora import inject_lora, lora_parameters
    from sam3_lora.sam3_compat.module_paths import trunk_of
    from sam3_lora.speed.text_cache import install_text_cache
    from sam3_lora.speed.trunk_cache import install_trunk_cache, remove_trunk_cache
    from sam3_lora.training.loss import build_sam3_loss

    models = {}
    for preset in ("balanced", "heads"):
        model = build(model_name).to(device).train()
        inject_lora(model, lora_config(preset))
        install_text_cache(model)  # as the trainer runs both (neither adapts the text encoder)
        models[preset] = (model, torch.optim.AdamW(lora_parameters(model), lr=1e-4))
    heads = models["heads"][0]
    loss_fn = build_sam3_loss(heads.transformer.decoder.num_queries)
    data = [
        copy_data_to_device(b, device) if device.type == "cuda" else b
        for b in batches(heads, toy_split(data_root), batch_size, 4)
    ]
    amp = _autocast(device)
    cache = install_trunk_cache(heads)
    with torch.no_grad(), amp:  # the first epoch: every image through the trunk once
        for b in data:
            heads(b)
    filled = cache.stats()

    def cached(on: bool) -> None:
        remove_trunk_cache(heads)
        if on:
            trunk_of(heads).forward = cache  # the same, filled cache back in front of the trunk

    def train_steps(preset: str) -> float:
        model, opt = models[preset]
        model.train()
        _sync(device)
        t = time.perf_counter()
        for b in data:
            _train_step(model, loss_fn, opt, b, amp)
        _sync(device)
        return (time.perf_counter() - t) / len(data)

    def forward_pass() -> float:
        heads.eval()
        _sync(device)
        t = time.perf_counter()
        with torch.no_grad(), amp:
            for b in data:
                heads(b)
        _sync(device)
        return (time.perf_counter() - t) / len(data)

    runs = {
        "balanced": lambda: (cached(False), train_steps("balanced"))[1],
        "heads": lambda: (cached(False), train_steps("heads"))[1],
        "heads_cached": lambda: (cached(True), train_steps("heads"))[1],
        "forward": lambda: (cached(False), forward_pass())[1],
        "forward_cached": lambda: (cached(True), forward_pass())[1],
    }
    times = {k: [] for k in runs}
    for i in range(warmup + steps):
        for name, fn in runs.items():
            t = fn()
            if i >= warmup:
                times[name].append(t)
    m = {k: statistics.median(v) for k, v in times.items()}
    return {
        **{f"{k}_s": v for k, v in m.items()},
        "heads_cached_vs_balanced": m["heads_cached"] / m["balanced"],
        "heads_cached_vs_heads": m["heads_cached"] / m["heads"],
        "forward_cached_vs_forward": m["forward_cached"] / m["forward"],
        "bytes_per_image": cache.memory_bytes / max(filled["misses"], 1),
        "images": filled["misses"],
        "steps": steps * len(data),
    }


def distill_ab(model_name: str, device, batch_size: int, warmup: int, steps: int, data_root: Path) -> dict:
    """Distillation's step-time cost at equal images per step, in one process: LoRA balanced on 2 x batch
    labelled images against LoRA balanced on batch labelled images + batch anchor images distilled from the
    base (adapters off), steps interleaved round by round."""
    import tempfile

    from sam3.model.utils.misc import copy_data_to_device

    from sam3_lora.data import toy
    from sam3_lora.data.anchors import anchor_images, write_anchor_split
    from sam3_lora.data.sam3_dataset import build_dataset, build_loader
    from sam3_lora.lora import inject_lora, lora_parameters
    from sam3_lora.speed.text_cache import install_text_cache
    from sam3_lora.training.distill import Distillation, DistillConfig, Teacher
    from sam3_lora.training.loss import build_sam3_loss

    model = build(model_name).to(device).train()
    inject_lora(model, lora_config("balanced"))
    install_text_cache(model)
    loss_fn = build_sam3_loss(model.transformer.decoder.num_queries)
    opt = torch.optim.AdamW(lora_parameters(model), lr=1e-4)
    move = (lambda b: copy_data_to_device(b, device)) if device.type == "cuda" else (lambda b: b)  # noqa: E731
    wide = [move(b) for b in batches(model, toy_split(data_root), 2 * batch_size, 2)]
    narrow = [move(b) for b in batches(model, toy_split(data_root), batch_size, 2)]
    anchors_root = toy.ensure(
        data_root.parent / "bench_anchors", "base", seed=2, splits={"train": 16, "valid": 0, "test": 0}
    )
    with tempfile.TemporaryDirectory() as tmp:
        records, folder = anchor_images(str(anchors_root / "train"))
        split = write_anchor_split(records, folder, ["circle", "square", "triangle"], Path(tmp))
        config = DistillConfig(images=str(folder), vocabulary=["circle", "square", "triangle"], anchor_batch=batch_size)
        loader = build_loader(
            build_dataset(split, model.image_size, training=True, num_hard_negatives=4, hflip=0.0), batch_size, True
        )
        distill = Distillation(config, Teacher(model, frozen_copy=False), loader)
        amp = _autocast(device)

        def step(batch, with_anchors: bool) -> float:
            _sync(device)
            t = time.perf_counter()
            anchors = (lambda: distill.loss(model, model, move)["loss_distill"]) if with_anchors else None
            _train_step(model, loss_fn, opt, batch, amp, anchors)
            _sync(device)
            return time.perf_counter() - t

        times = {"plain": [], "distill": []}
        for i in range(warmup + steps):
            for j in range(2):
                plain, distilled = step(wide[j], False), step(narrow[j], True)
                if i >= warmup:
                    times["plain"].append(plain)
                    times["distill"].append(distilled)
    m = {k: statistics.median(v) for k, v in times.items()}
    return {
        "plain_step_s": m["plain"],
        "distill_step_s": m["distill"],
        "ratio": m["distill"] / m["plain"],
        "images_per_step": 2 * batch_size,
        "steps": 2 * steps,
    }


def dataloader_rate(model_name: str, batch_size: int, num_workers: int, data_root: Path, batches_n: int = 24) -> float:
    from sam3_lora.data.sam3_dataset import build_dataset, build_loader

    size = build(model_name).image_size
    ds = build_dataset(toy_split(data_root), size, training=True)
    loader = build_loader(ds, batch_size, True, num_workers=num_workers)
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    t = time.perf_counter()
    n = 0
    for _ in range(batches_n):
        try:
            n += len(next(it).img_batch)
        except StopIteration:
            loader.sampler.set_epoch(1)
            it = iter(loader)
    return n / (time.perf_counter() - t)


def _child(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        if spec.get("may_fail"):
            oom = "out of memory" in out.stderr.lower()
            return {"failed": "out of memory" if oom else out.stderr.strip().splitlines()[-1][:200]}
        raise RuntimeError(f"setup {spec['name']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine(device) -> str:
    import psutil

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, bf16 autocast)"
    return (
        f"CPU: {platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, torch {torch.__version__}, {torch.get_num_threads()} threads, fp32"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        default="sam3_medium",
        type=model_name,
        help="sam3_tiny, sam3_medium or sam3 (the stock architecture); NAME@SIZE at another input size",
    )
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="setups run round-robin this many times; each keeps its best round's median (noise guard)",
    )
    ap.add_argument("--workers", type=int, default=None, help="data-loader workers (default: the trainer's)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data", default=str(Path.home() / ".cache" / "sam3_lora" / "bench_toy"))
    ap.add_argument(
        "--best-batch",
        type=int,
        nargs="*",
        default=[],
        help="also run LoRA balanced with every lever at these batch sizes (an out-of-memory batch is reported)",
    )
    ap.add_argument(
        "--json", default=None, help="write the results here; 'auto': tools/bench_results/<device>_<model>.json"
    )
    ap.add_argument(
        "--suite",
        choices=("all", "levers", "trunk", "distill"),
        default="all",
        help="all: every preset, PEFT and each lever; levers: full fine-tuning and LoRA balanced with each lever "
        "added in turn, and batch 1 with ViT activation checkpointing (what make gpu-check measures); trunk: "
        "the cached-trunk rows alone; distill: distillation's step against one on as many labelled images, alone",
    )
    ap.add_argument("--inference-batch", type=int, default=None, help="inference batch (default: --batch)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(train_setup(json.loads(args.child))))
        return

    from sam3_lora.training.config import TrainerConfig

    workers = TrainerConfig().num_workers if args.workers is None else args.workers
    device = torch.device(args.device)
    common = {
        "model": args.model,
        "device": args.device,
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "data": args.data,
    }
    setups = [
        {"name": "full fine-tuning", "kind": "full"},
        {"name": "LoRA balanced", "kind": "lora", "preset": "balanced"},
    ]
    if args.suite == "all":
        setups += [{"name": f"LoRA {p}", "kind": "lora", "preset": p} for p in PRESETS if p != "balanced"]
        setups += [{"name": "LoRA balanced + ViT act. ckpt", "kind": "lora", "preset": "balanced", "act_ckpt": True}]
        setups += [
            {"name": OURS_LINEAR, "kind": "lora", "lora": LINEAR_BALANCED},
            {"name": PEFT_EQUAL, "kind": "peft", "lora": LINEAR_BALANCED, "equal_capacity": True},
            {"name": PEFT_SAME_R, "kind": "peft", "lora": LINEAR_BALANCED},
        ]
    # The speed levers, one added at a time (bf16 base and compilation where they apply: bf16
    # autocast on CUDA; inductor compiles for minutes on a CPU)
    balanced = {"kind": "lora", "preset": "balanced"}
    setups += [{"name": "LoRA balanced + text cache", **balanced, "text_cache": True}]
    all_levers = {**balanced, "text_cache": True}
    if device.type == "cuda":
        setups += [
            {"name": "LoRA balanced + text cache + bf16 base", **balanced, "text_cache": True, "bf16_base": True}
        ]
        all_levers = {**balanced, "text_cache": True, "bf16_base": True, "compile": True}
        setups += [{"name": ALL_LEVERS, **all_levers}]
    setups += [{"name": f"{lever_name(device)} + ViT act. ckpt, batch 1", **all_levers, "act_ckpt": True, "batch": 1}]
    setups += [
        {"name": f"LoRA balanced + levers, batch {b}", **all_levers, "batch": b, "may_fail": True}
        for b in args.best_batch
    ]
    if args.suite in ("trunk", "distill"):  # one interleaved comparison alone, no setup processes
        setups = []
    toy_split(Path(args.data))  # generate once, before the children
    results = {
        "machine": machine(device),
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda},
        "model": args.model,
        "batch": args.batch,
        "rounds": args.rounds,
        "steps": args.steps,
        "train": {},
    }
    for round_ in range(args.rounds):
        for s in setups:
            r = _child({**common, **s})
            if "failed" in r:
                results["train"].setdefault(s["name"], {**r, "batch": s["batch"]})
                print(f"  round {round_ + 1} {s['name']}: {r['failed']}", file=sys.stderr)
                continue
            r["batch"] = s.get("batch", args.batch)
            best = results["train"].get(s["name"])
            if best is None or r["step_s"] < best["step_s"]:
                results["train"][s["name"]] = {**r, "peak_mem_mb": max(r["peak_mem_mb"], (best or r)["peak_mem_mb"])}
            print(
                f"  round {round_ + 1} {s['name']}: {r['step_s'] * 1000:.0f} ms/step, peak +{r['peak_mem_mb']:.0f} MB",
                file=sys.stderr,
            )
    every = args.suite in ("all", "levers")
    if every:
        results["text_cache"] = text_cache_ab(args.model, device, args.batch, 1, args.steps, Path(args.data))
    if every or args.suite == "trunk":
        results["trunk_cache"] = trunk_cache_ab(args.model, device, args.batch, 1, args.steps, Path(args.data))
    if every or args.suite == "distill":
        results["distill"] = distill_ab(args.model, device, args.batch, 1, args.steps, Path(args.data))
    if every:
        infer_batch = args.inference_batch or args.batch
        results["inference"] = inference(args.model, device, infer_batch, args.warmup, args.steps, Path(args.data))
        results["inference_batch"] = infer_batch
    if args.suite == "all":
        results["data_images_per_s"] = dataloader_rate(args.model, args.batch, workers, Path(args.data))
        results["data_workers"] = workers
    print(report(results) if results["train"] else comparison_report(results))
    if args.json:
        out = (
            Path(args.json)
            if args.json != "auto"
            else RESULTS_DIR / f"{device_slug(device)}_{args.model.replace('@', '_at')}.json"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
        print(f"written: {out}", file=sys.stderr)


def lever_name(device) -> str:
    """Every lever that applies on ``device`` (bf16 base and compilation need CUDA)."""
    return ALL_LEVERS if device.type == "cuda" else "LoRA balanced + text cache"


def device_slug(device) -> str:
    """``nvidia_h100_80gb_hbm3`` from the GPU's name; ``cpu`` on a CPU."""
    if device.type != "cuda":
        return "cpu"
    return "".join(c if c.isalnum() else "_" for c in torch.cuda.get_device_name().lower()).strip("_")


def report(r: dict) -> str:
    t = r["train"]
    full = t["full fine-tuning"]
    lines = [
        f"**{r['model']}**, batch {r['batch']}, {r['machine']}; step = best of {r['rounds']} rounds' "
        f"median over {r['steps']} steps",
        "",
        "| training setup | trainable | step (median) | vs full FT | images/s | peak memory above model | vs full FT |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, x in t.items():
        if "failed" in x:
            lines.append(f"| {name} | | {x['failed']} | | | | |")
            continue
        lines.append(
            f"| {name} | {x['trainable']:,} | {x['step_s'] * 1000:.0f} ms | {x['step_s'] / full['step_s']:.2f}x "
            f"| {x['images_per_s']:.1f} | {x['peak_mem_mb']:.0f} MB | {x['peak_mem_mb'] / max(full['peak_mem_mb'], 1e-9):.2f}x |"
        )
    i = r["inference"]
    lora = t["LoRA balanced"]
    lines += [
        "",
        f"| inference (forward, no grad, batch {r.get('inference_batch', r['batch'])}) | time | vs base |",
        "|---|---|---|",
    ]
    for name, key in (
        ("base model", "base_s"),
        ("LoRA balanced, unmerged", "unmerged_s"),
        ("LoRA balanced, merged", "merged_s"),
    ):
        lines.append(f"| {name} | {i[key] * 1000:.0f} ms | {i[key] / i['base_s']:.3f}x |")
    lines += [
        "",
        f"- LoRA balanced step / full fine-tuning step: **{lora['step_s'] / full['step_s']:.2f}x**"
        f" (target <= 0.75); peak memory {lora['peak_mem_mb'] / max(full['peak_mem_mb'], 1e-9):.2f}x",
    ]
    tc = r.get("text_cache")
    if tc:
        lines.append(
            f"- text cache, interleaved in one process over {tc['steps']} steps each: LoRA balanced + text cache / LoRA "
            f"balanced step **{tc['ratio']:.3f}x** (target <= 1.00); the text encoder per call "
            f"{tc['encoder_stock_s'] * 1000:.1f} ms stock, {tc['encoder_cached_s'] * 1000:.2f} ms cached"
        )
    lines += trunk_cache_summary(r.get("trunk_cache"))
    lines += distill_summary(r.get("distill"))
    if OURS_LINEAR in t:
        ours = t[OURS_LINEAR]["step_s"]
        lines.append(
            f"- ours / PEFT step on the same Linear modules: **{ours / t[PEFT_EQUAL]['step_s']:.2f}x** at equal "
            f"capacity, {ours / t[PEFT_SAME_R]['step_s']:.2f}x against PEFT's single r8 on qkv (target <= 1)"
        )
    lines.append(
        f"- inference unmerged / base: **{i['unmerged_s'] / i['base_s']:.3f}x** (target <= 1.05); "
        f"merged / base: **{i['merged_s'] / i['base_s']:.3f}x**"
    )
    if "data_images_per_s" in r:
        lines.append(
            f"- data loader ({r['data_workers']} workers): {r['data_images_per_s']:.1f} images/s vs LoRA balanced "
            f"training {lora['images_per_s']:.1f} images/s: **{r['data_images_per_s'] / lora['images_per_s']:.1f}x** "
            "(target >= 3)"
        )
    lines += lever_summary(r)
    return "\n".join(lines)


def comparison_report(r: dict) -> str:
    """``--suite trunk`` or ``distill``: the interleaved comparison alone."""
    head = f"**{r['model']}**, batch {r['batch']}, {r['machine']}"
    return "\n".join([head, "", *trunk_cache_summary(r.get("trunk_cache")), *distill_summary(r.get("distill"))])


def distill_summary(d) -> list:
    if not d:
        return []
    return [
        f"- distillation, interleaved in one process over {d['steps']} steps each, {d['images_per_step']} images "
        f"per step: LoRA balanced + distillation (half labelled, half anchors) / LoRA balanced "
        f"**{d['ratio']:.2f}x** (target <= 1.5); {d['distill_step_s'] * 1000:.0f} ms vs {d['plain_step_s'] * 1000:.0f} ms"
    ]


def trunk_cache_summary(tc) -> list:
    if not tc:
        return []
    return [
        f"- trunk cache, epochs after the first, interleaved in one process over {tc['steps']} steps each: LoRA heads "
        f"cached {tc['heads_cached_s'] * 1000:.0f} ms, LoRA heads uncached {tc['heads_s'] * 1000:.0f} ms, LoRA balanced "
        f"{tc['balanced_s'] * 1000:.0f} ms per step: heads cached / balanced **{tc['heads_cached_vs_balanced']:.2f}x** "
        f"(target <= 0.30), / heads uncached **{tc['heads_cached_vs_heads']:.2f}x** (the cache's own share)",
        f"- trunk cache, validation forward (no grad): cached / uncached **{tc['forward_cached_vs_forward']:.2f}x** "
        f"(target <= 0.30); {tc['bytes_per_image'] / 2**20:.2f} MB per cached image",
    ]


def lever_summary(r: dict) -> list:
    """The GPU targets: where the speed levers bring LoRA balanced."""
    t, i = r["train"], r["inference"]
    ran = {n: x for n, x in t.items() if "failed" not in x and n.startswith("LoRA balanced")}
    best_name, best = max(ran.items(), key=lambda kv: kv[1]["images_per_s"])
    full = t["full fine-tuning"]
    per_image = i["merged_s"] / r.get("inference_batch", r["batch"]) * 1000
    lines = [
        f"- best LoRA balanced throughput: **{best['images_per_s']:.1f} images/s** ({best_name}, batch "
        f"{best.get('batch', r['batch'])}; GPU target >= 15)",
        f"- merged inference: **{per_image:.0f} ms per image** at batch {r.get('inference_batch', r['batch'])} "
        f"(GPU target <= 40 at batch 1); unmerged / merged **{i['unmerged_s'] / i['merged_s']:.2f}x** (target <= 1.05)",
    ]
    if ALL_LEVERS in t and "failed" not in t[ALL_LEVERS]:
        x = t[ALL_LEVERS]
        lines.append(
            f"- with every lever: step / full fine-tuning **{x['step_s'] / full['step_s']:.2f}x** (target <= 0.70), "
            f"peak memory {x['peak_mem_mb'] / max(full['peak_mem_mb'], 1e-9):.2f}x (target <= 0.6)"
        )
    small = next((x for n, x in t.items() if n.endswith("+ ViT act. ckpt, batch 1") and "failed" not in x), None)
    if small:
        lines.append(
            f"- batch 1 with ViT act. ckpt: **{small['peak_total_mb'] / 1024:.1f} GB** peak in all (target <= 6)"
        )
    return lines


if __name__ == "__main__":
    main()
