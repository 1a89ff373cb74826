"""The ``dataset`` config group as typed settings.

``conf/dataset/*.yaml`` instantiate :class:`DatasetConfig` through :meth:`DatasetConfig.from_settings`
(its values are written once, in the yaml). A run directory's recorded ``dataset`` section is read back with
:meth:`DatasetConfig.from_section`, which builds the same class without instantiating any
target named in that file.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from sam3_lora.core.errors import UserError

SPLIT_NAMES = ("train", "valid", "test")
HYDRA_KEYS = ("_target_", "_convert_", "_recursive_", "_partial_", "_args_")


class DatasetConfigError(UserError, ValueError):
    """A ``dataset`` section with missing or unknown keys."""


@dataclass
class Split:
    """One split of a COCO dataset: the annotation file and the folder its file_names are relative to."""

    ann_file: str
    img_folder: str

    def exists(self) -> bool:
        return Path(self.ann_file).is_file()


@dataclass
class Augment:
    hflip: float  # probability of a horizontal flip
    scale_min: float  # random resize to [scale_min, 1] x resolution, then pad


@dataclass
class Validation:
    check_images: bool  # decode every image once before training (existence, decoding, size)


@dataclass
class ToySpec:
    """Synthetic shapes generated from a seed on first use (``sam3_lora/data/toy.py``)."""

    domain: str  # base (bright shapes, dark background) | shifted (dark shapes, light noisy background)
    seed: int
    size: int  # image side in pixels
    splits: Dict[str, int]  # images per split


@dataclass
class DatasetConfig:
    name: str
    root: str
    train: Split
    valid: Optional[Split]
    test: Optional[Split]
    # Per training image: the categories present plus this many absent ones as negative prompts
    # (-1: all absent categories, as upstream; 0: none).
    num_hard_negatives: int
    max_ann_per_img: int
    augment: Augment
    # Evaluation asks every category of every image; chunk them for many-category datasets.
    eval_category_chunk: Optional[int]
    validate: Validation
    generate: Optional[ToySpec]

    def __post_init__(self) -> None:
        # Hydra's instantiate (with _convert_="all") and from_section hand nested sections over as dicts.
        for name in SPLIT_NAMES:
            value = getattr(self, name)
            if isinstance(value, Mapping):
                setattr(self, name, _build(Split, value, f"dataset.{name}"))
        if isinstance(self.augment, Mapping):
            self.augment = _build(Augment, self.augment, "dataset.augment")
        if isinstance(self.validate, Mapping):
            self.validate = _build(Validation, self.validate, "dataset.validate")
        if isinstance(self.generate, Mapping):
            self.generate = _build(ToySpec, self.generate, "dataset.generate")

    def ensure_generated(self) -> None:
        """Write the toy data on first use when this dataset is generated (``generate`` set)."""
        if self.generate is not None:
            from sam3_lora.data import toy

            g = self.generate
            toy.ensure(self.root, domain=g.domain, seed=g.seed, size=g.size, splits=dict(g.splits))

    def split(self, name: str) -> Optional[Split]:
        """The split called ``name`` when it is configured, else None."""
        return getattr(self, name) if name in SPLIT_NAMES else None

    @classmethod
    def from_settings(cls, **values: Any) -> "DatasetConfig":
        """The ``_target_`` of ``conf/dataset``: every key checked by name (unknown and missing
        ones named) before the class is built."""
        return cls.from_section(values)

    @classmethod
    def from_section(cls, section: Mapping[str, Any], where: str = "") -> "DatasetConfig":
        """A resolved ``dataset`` section read as data (a run directory's record, say): Hydra's
        keys (``_target_``, ``_convert_``) are ignored, nothing is imported; unknown or missing
        keys are an error naming ``where`` (the file) and the key."""
        values = {k: v for k, v in section.items() if k not in HYDRA_KEYS}
        try:
            return _build(cls, values, "dataset")
        except DatasetConfigError as e:
            raise DatasetConfigError(f"{where}: {e}" if where else str(e)) from None


def _build(cls, values: Mapping[str, Any], key: str):
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    missing = sorted(names - set(values))
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown key(s) {', '.join(f'{key}.{k}' for k in unknown)}")
        if missing:
            parts.append(f"missing key(s) {', '.join(f'{key}.{k}' for k in missing)}")
        raise DatasetConfigError(
            f"{'; '.join(parts)} (the keys of conf/dataset/coco.yaml are the ones a dataset section takes)"
        )
    return cls(**values)
