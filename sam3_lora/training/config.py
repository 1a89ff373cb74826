"""The ``trainer`` config group: every training setting, its default, meaning and valid values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from sam3_lora.core.device import DEVICE_NAME
from sam3_lora.core.schema import Valid, at_least, number_in, one_of, positive, setting
from sam3_lora.evaluation.coco_ap import STAT_NAMES
from sam3_lora.evaluation.saco import SCORE_KEYS

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
# COCOeval's stats, then the SA-Co scores (saco/IL_MCC, bbox/pmF1, bbox/cgF1, segm/pmF1, segm/cgF1).
BEST_METRICS = tuple(f"{kind}/{stat}" for kind in ("bbox", "segm") for stat in STAT_NAMES) + SCORE_KEYS


@dataclass
class TrainerConfig:
    """The ``trainer`` group (``conf/trainer/``)."""

    max_epochs: int = setting(20, "passes over the training split", at_least(1))
    max_steps: Optional[int] = setting(None, "optimizer steps; stop early when reached", at_least(1, optional=True))
    batch_size: int = setting(2, "images per micro-batch (per GPU)", at_least(1))
    num_workers: int = setting(2, "data-loading processes", at_least(0), names_run=False)
    grad_accum: int = setting(
        1, "micro-batches per optimizer step: effective batch = batch_size x grad_accum (x GPUs)", at_least(1)
    )
    clip_grad: Optional[float] = setting(
        0.1,
        "max gradient norm, as upstream; null to disable",
        positive("a positive max gradient norm (upstream: 0.1) or null to disable", optional=True),
    )
    mask_loss: bool = setting(
        True,
        "train the masks too (focal 200 + dice 10 where the data has masks); false: boxes and classes only, as "
        "Meta's RF100-VL and ODinW recipes (their loss has no mask term)",
    )
    amp: str = setting("auto", "autocast: auto (bf16 on CUDA, off on CPU), bf16, fp16 or off", one_of(*AMP_CHOICES))
    activation_checkpointing: bool = setting(False, "recompute ViT blocks in backward (less memory, ~30% more time)")
    text_cache: bool = setting(
        True, "while the text encoder is frozen, encode each prompt once and reuse it (same outputs)"
    )
    trunk_cache: bool = setting(
        True,
        "while the image trunk is frozen and sees the same images (no random resize), compute each image's trunk "
        "features once and reuse them in later epochs, validations and scoring (sam3_lora/speed/trunk_cache.py)",
    )
    trunk_cache_memory_gb: float = setting(
        4.0,
        "trunk features kept in host memory (GB); beyond it, on disk (trunk_cache_dir)",
        number_in(0, float("inf"), "a number of GB >= 0"),
    )
    trunk_cache_dir: Optional[str] = setting(
        None,
        "a folder for trunk features beyond the memory budget, kept and shared by runs (memory-mapped); "
        "null: <run_dir>/trunk_cache, removed when the run ends",
        names_run=False,
    )
    compile: bool = setting(
        False, "torch.compile each ViT block (the first step pays the compilation; same outputs up to rounding)"
    )
    base_dtype: Optional[str] = setting(
        None,
        "bf16: frozen matrix weights of the image and text backbones held in bf16 (needs bf16 autocast); LoRA "
        "weights, gradients and optimizer state stay fp32",
        Valid(lambda v: v in (None, "bf16"), "null (fp32) or bf16"),
    )
    eval_every: int = setting(1, "epochs between validations", at_least(1))
    save_every: int = setting(0, "epochs between kept checkpoints; 0 = only last and best", at_least(0))
    best_metric: str = setting(
        "bbox/AP",
        "the validation score that picks the best adapter: a COCOeval stat (bbox/AP, segm/AP50, ...) or an SA-Co "
        "score (segm/cgF1, saco/IL_MCC, segm/pmF1, ...)",
        one_of(*BEST_METRICS),
    )
    log_every: int = setting(10, "optimizer steps between log lines", at_least(1))
    max_dets: int = setting(100, "detections kept per image and prompt at evaluation", at_least(1))
    resume: Optional[str] = setting(None, "a checkpoint (.pt) or a run directory to continue", names_run=False)
    auto_resume: bool = setting(True, "pick up <run dir>/checkpoints/last.pt when present")
    deterministic: bool = setting(False, "torch's deterministic algorithms (slower)")
    max_bad_steps: int = setting(5, "consecutive NaN/inf losses before stopping", at_least(1))
    stale_lock_s: int = setting(
        600,
        "a run directory's lock held by a training on another host counts as abandoned once its heartbeat is this "
        "old (seconds); on the same host a dead owner is seen at once",
        at_least(60),
    )
    device: str = setting("auto", "auto (first CUDA GPU, else CPU), cpu, cuda or cuda:N", DEVICE_NAME)
