"""``preserve=distill``: each step also matches the tuned model to the frozen base on anchor images.

Anchor images (unlabelled: another folder, a COCO split's images, or the target images) are prompted
with concepts the base knows (``preserve.vocabulary``); the tuned model's answers are pulled towards
the base's (the loss and its teacher: ``distill_loss.py``; the anchors: ``distill_anchors.py``).
A keeping method (``keeping.py``): these settings prepare the anchors and build the step's term.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from torch import nn

from sam3_lora.core.schema import REQUIRED, Valid, at_least, number_in, setting
from sam3_lora.data.config import ToySpec
from sam3_lora.data.prompt_lists import is_prompt_list
from sam3_lora.data.train_subset import is_image_id_list
from sam3_lora.training.distill_anchors import TARGET_IMAGES, anchor_loader, prepare_anchors
from sam3_lora.training.distill_loss import TERM_WEIGHTS, Distillation, Teacher, distillation_terms, final_outputs
from sam3_lora.training.keeping import KeepingMethod

__all__ = ["TARGET_IMAGES", "TERM_WEIGHTS", "DistillConfig", "Distillation", "Teacher", "distillation_terms", "final_outputs"]


@dataclass
class DistillConfig(KeepingMethod):
    """The ``preserve=distill`` options (``conf/preserve/``); ``preserve=none`` trains without them."""

    weight: float = setting(
        1.0,
        "the distillation loss's weight against the labelled loss (choose it on valid splits, never on test)",
        number_in(0, float("inf"), "a number > 0", low_open=True),
    )
    anchor_batch: int = setting(
        4, "anchor images per micro-batch, through the same step as the labelled batch", at_least(1)
    )
    images: str = setting(
        REQUIRED,
        "the anchor images: a folder of images, a COCO annotation file (its images; labels ignored), or 'target' "
        "(the training images). Never images of a scored split: that is refused",
        names_run=False,
    )
    img_folder: Optional[str] = setting(
        None,
        "with a COCO file: the folder its file_names are relative to (default: the file's folder)",
        names_run=False,
    )
    image_ids: Any = setting(
        None,
        "with a COCO file: only these of its images (null: all): a list of ids, a text file with one id a line, or "
        "a shipped list's name (coco_val2017_anchors: the val2017 images no retention=coco_val2017 score uses)",
        Valid(is_image_id_list, "a list of image ids, the path of a text file or a shipped list's name"),
        names_run=False,
    )
    vocabulary: Any = setting(
        REQUIRED,
        "the anchor concepts, what the base knows (e.g. COCO's 80 names for SAM3: coco80, shipped): a list, a "
        "text file with one name a line, or a shipped list's name",
        Valid(lambda v: v is not None and is_prompt_list(v), "a list of names or the path of a text file"),
        names_run=False,
    )
    prompts_per_image: int = setting(
        4, "anchor concepts asked of each anchor image, drawn at random each time (-1: all)", at_least(-1)
    )
    keep_training_categories: bool = setting(
        False,
        "with images=target: also ask the training categories (the teacher's answers then contradict the labels); "
        "otherwise they are left out of the vocabulary there",
    )
    mask_size: int = setting(32, "masks are compared as logits average-pooled to this side", at_least(1))
    generate: Optional[ToySpec] = setting(
        None,
        "toy shapes generated on first use so that `images` is their train folder (the toy world)",
        names_run=False,
    )

    def prepare(self, target, retention, run_dir: Path, info) -> None:
        """The anchor images as the run's ``anchors.coco.json``, checked against every scored split."""
        self._anchors = prepare_anchors(self, target, retention, run_dir, info)

    def build(self, model: nn.Module, tuning, image_size: int, num_workers: int, seed: int, info) -> Distillation:
        """The distillation term of every step, on the model as tuning left it."""
        loader = anchor_loader(self, self._anchors, image_size, num_workers, seed, info)
        return Distillation(self, Teacher.for_model(model, tuning), loader)

