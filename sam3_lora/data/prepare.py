"""A dataset prepared once for a command: toy data generated if asked, each split validated (repairs
written to a cleaned copy, never to the original), and the loaders built from what passed.

``train`` prepares its target dataset and its retention dataset, ``evaluate`` the split it scores
(and ``valid`` when it chooses a score threshold there), ``check`` validates without writing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from torch.utils.data import DataLoader

from sam3_lora.data.config import SPLIT_NAMES, DatasetConfig, Split
from sam3_lora.data.sam3_dataset import build_dataset, build_loader
from sam3_lora.data.train_subset import LISTED, draw_train_subset, listed_subset, subset_path
from sam3_lora.data.validate import (
    DataValidationError,
    ValidationReport,
    cleaned_path,
    split_problems,
    usable_annotations,
    validate_split,
)

log = logging.getLogger("sam3_lora.data")


class MissingSplitError(DataValidationError):
    """A split a command needs is not configured or its annotation file does not exist."""


@dataclass
class PreparedDataset:
    """The usable splits of one dataset (a split's ``ann_file`` is the cleaned copy when validation
    repaired anything) and what validation found."""

    config: DatasetConfig
    splits: Dict[str, Split]
    reports: Dict[str, ValidationReport] = field(default_factory=dict)  # empty where rank 0 validated
    listed: Dict[str, str] = field(default_factory=dict)  # split -> what its image_ids kept (a note)

    @property
    def name(self) -> str:
        return self.config.name

    def split(self, name: str) -> Optional[Split]:
        return self.splits.get(name)

    def heldout(self, preferred: str = "test") -> str:
        """The split to score: ``preferred`` when present, else valid."""
        for name in (preferred, "valid"):
            if name in self.splits:
                return name
        raise MissingSplitError(
            f"dataset '{self.name}' has neither a '{preferred}' nor a 'valid' split to score "
            f"(looked for {self.config.split(preferred).ann_file if self.config.split(preferred) else preferred})"
        )

    def notes(self, name: str, use: str = "scored") -> List[str]:
        """What figures on split ``name`` rest on, when it is not the annotation file as it stands
        (``use``: what was done with the split)."""
        notes = [self.listed[name]] if name in self.listed else []
        report = self.reports.get(name)
        if report is None or not report.repaired:
            return notes
        return notes + [f"data: {use} on a repaired copy of {report.ann_file} ({report.repairs()})"]

    def num_images(self, name: str) -> Optional[int]:
        report = self.reports.get(name)
        return report.num_images if report is not None else None

    def train_loader(
        self, image_size: int, batch_size: int, num_workers: int, seed: int, world_size: int = 1, rank: int = 0
    ) -> DataLoader:
        """The training split, augmented and with hard negatives as configured, sharded over ranks."""
        c = self.config
        ds = build_dataset(
            self.require("train"),
            image_size,
            training=True,
            num_hard_negatives=c.num_hard_negatives,
            max_ann_per_img=c.max_ann_per_img,
            hflip=c.augment.hflip,
            scale_min=c.augment.scale_min,
            negative_prompts=c.negative_prompt_names(),
        )
        return build_loader(ds, batch_size, True, num_workers, seed=seed, world_size=world_size, rank=rank)

    def eval_loader(self, name: str, image_size: int, batch_size: int, num_workers: int) -> DataLoader:
        """Split ``name`` in order, every category asked of every image."""
        ds = build_dataset(
            self.require(name), image_size, training=False, category_chunk_size=self.config.eval_category_chunk
        )
        return build_loader(ds, batch_size, False, num_workers)

    def require(self, name: str) -> Split:
        split = self.splits.get(name)
        if split is None:
            spec = self.config.split(name)
            where = spec.ann_file if spec is not None else f"dataset.{name}"
            raise MissingSplitError(
                f"split '{name}' of dataset '{self.name}' has no annotation file ({where}); pass another split or "
                f"dataset.{name}.ann_file=..."
            )
        return split


def prepare_dataset(
    dataset: DatasetConfig,
    clean_dir: Path,
    splits: Sequence[str] = SPLIT_NAMES,
    validate: bool = True,
    strict: bool = True,
    data_seed: int = 0,
) -> PreparedDataset:
    """The ``splits`` of ``dataset`` that exist, validated (repaired copies under ``clean_dir``).
    ``strict``: every problem of every split is listed at once in one :class:`DataValidationError`;
    otherwise a split with problems is left out, its report kept (``check`` lists them).

    ``validate=False`` (DDP ranks other than 0): rank 0 has generated and checked the data already;
    take its cleaned copies where it wrote any, without reading every image again.

    A split's ``image_ids`` set: only the images it lists are kept, before validation (so only they are
    read), written beside the cleaned copies. ``dataset.train_images`` set: the train split is that many
    of its images drawn by ``data_seed`` (both: :mod:`sam3_lora.data.train_subset`)."""
    if validate:
        dataset.ensure_generated()
    usable: Dict[str, Split] = {}
    reports: Dict[str, ValidationReport] = {}
    listed: Dict[str, str] = {}
    problems: List[str] = []
    for name in splits:
        spec = dataset.split(name)
        if spec is None or not spec.exists():
            continue
        if not validate:
            found = (subset_path(clean_dir, name), cleaned_path(clean_dir, name), subset_path(clean_dir, name, LISTED))
            taken = next((p for p in found if p.is_file()), spec.ann_file)
            usable[name] = Split(str(taken), spec.img_folder)
            continue
        source = spec.ann_file
        if spec.image_ids is not None:
            key = f"dataset '{dataset.name}' {name}.image_ids"
            source, listed[name] = listed_subset(source, spec.image_ids, clean_dir, name, key)
            log.info("%s", listed[name])
        report, cleaned = validate_split(source, spec.img_folder, dataset.validate.check_images)
        reports[name] = report
        if report.errors:
            problems.append(split_problems(name, report))
            continue
        log.info("data %s", report.summary())
        ann_file = usable_annotations(source, cleaned, clean_dir, name)
        if name == "train" and dataset.train_images is not None:
            ann_file = draw_train_subset(ann_file, dataset.train_images, data_seed, clean_dir)
            log.info("data train: %d of %d images, drawn by data_seed=%d", dataset.train_images, report.num_images, data_seed)
        usable[name] = Split(ann_file, spec.img_folder)
    if problems and strict:
        raise DataValidationError("\n".join(problems))
    return PreparedDataset(dataset, usable, reports, listed)
