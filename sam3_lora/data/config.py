"""The ``dataset`` config group as typed settings.

Each setting's default, meaning and valid values are declared once, here; ``conf/dataset/*.yaml`` hold
the presets (Roboflow's split layout, the toy world). A run directory's recorded ``dataset`` section is
read back with :meth:`DatasetConfig.from_section`, which builds the same class without instantiating any
target named in that file.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from sam3_lora.core.documents import DocumentError, Fields, Kind, ListOf, read_json
from sam3_lora.core.errors import UserError
from sam3_lora.core.schema import HYDRA_KEYS, REQUIRED, Valid, at_least, is_int, number_in, one_of, problems, setting
from sam3_lora.data.prompt_lists import is_prompt_list, read_prompt_list
from sam3_lora.data.train_subset import is_image_id_list

SPLIT_NAMES = ("train", "valid", "test")
TOY_DOMAINS = ("base", "shifted")  # sam3_lora/data/toy.py


class DatasetConfigError(UserError, ValueError):
    """A ``dataset`` section with missing or unknown keys, or values out of range."""


# What is read of a COCO file for its category names (the rest is data validation's: data/validate.py).
_CATEGORY_NAMES = Fields(
    {"categories": ListOf(Fields({"name": Kind(str)}, required=("name",)))}, required=("categories",)
)


@dataclass
class Split:
    """One split of a COCO dataset: the annotation file and the folder its file_names are relative to."""

    ann_file: str = setting(doc="the COCO annotation file", names_run=False)
    img_folder: str = setting(doc="the folder the images' file_name values are relative to", names_run=False)
    image_ids: Any = setting(
        None,
        "only these images of ann_file (null: all): a list of ids, a text file with one id a line, or a shipped "
        "list's name (coco_val2017_test500, ...: sam3_lora/data/lists/); written beside the run's data, every id "
        "must be an image of the file (sam3_lora/data/train_subset.py)",
        Valid(is_image_id_list, "a list of image ids, the path of a text file or a shipped list's name"),
        names_run=False,
    )

    def exists(self) -> bool:
        return Path(self.ann_file).is_file()

    def category_names(self, fix: str, error=DocumentError) -> List[str]:
        """The names of the split's categories, in id order, read and checked (``fix``: what the
        message tells the user to do when the file cannot be read)."""
        coco = read_json(self.ann_file, "COCO annotation file", fix, _CATEGORY_NAMES, error, max_bytes=None)
        return [c["name"] for c in sorted(coco["categories"], key=lambda c: c.get("id", 0))]


def _roboflow(split: str) -> Split:
    """Roboflow's COCO layout: ``ROOT/<split>/_annotations.coco.json`` beside the split's images."""
    return Split(f"${{..root}}/{split}/_annotations.coco.json", f"${{..root}}/{split}")


@dataclass
class Augment:
    hflip: float = setting(0.5, "probability of a horizontal flip", number_in(0, 1, "a probability in [0, 1]"))
    scale_min: float = setting(
        0.75,
        "random resize to [scale_min, 1] x resolution, then pad",
        number_in(0, 1, "a fraction of the resolution in (0, 1]", low_open=True),
    )


@dataclass
class Validation:
    check_images: bool = setting(True, "decode every image once before training (existence, decoding, size)")


@dataclass
class ToySpec:
    """Synthetic shapes generated from a seed on first use (``sam3_lora/data/toy.py``)."""

    domain: str = setting(
        "shifted", "base (bright shapes on dark) | shifted (outlined shapes on a noisy tint)", one_of(*TOY_DOMAINS)
    )
    seed: int = setting(0, "the generator's seed")
    size: int = setting(128, "image side in pixels", at_least(16))
    splits: Dict[str, int] = setting(
        doc="images per split",
        valid=Valid(
            lambda d: set(d) <= set(SPLIT_NAMES) and all(is_int(n) and n >= 0 for n in d.values()),
            f"image counts >= 0 for splits among {', '.join(SPLIT_NAMES)}",
        ),
        factory=lambda: {"train": 48, "valid": 16, "test": 32},
    )


@dataclass
class DatasetConfig:
    """The ``dataset`` group (and ``retention``): a COCO dataset in Roboflow's layout
    (``ROOT/{train,valid,test}/_annotations.coco.json`` beside the images) or generated toy shapes."""

    name: str = setting("coco", "the dataset's name in results, tables and model cards")
    root: str = setting(REQUIRED, "the export's folder (Roboflow's layout below it)", names_run=False)
    train: Split = setting(
        doc="the split trained on (a retention dataset is only scored: its valid and test)",
        factory=functools.partial(_roboflow, "train"),
    )
    valid: Optional[Split] = setting(
        doc="validation during training; SA-Co score thresholds are chosen on it",
        factory=functools.partial(_roboflow, "valid"),
    )
    test: Optional[Split] = setting(
        doc="the held-out split scored after training", factory=functools.partial(_roboflow, "test")
    )
    train_images: Optional[int] = setting(
        None,
        "train on this many images of the train split, drawn by the run's data_seed (null: all of them); "
        "with data_seed=${seed} (the default) each seed trains on its own draw (sam3_lora/data/train_subset.py)",
        at_least(1, optional=True),
    )
    num_hard_negatives: int = setting(
        4,
        "per training image: the categories present plus this many absent ones as negative prompts "
        "(-1: every absent category, as upstream; 0: none)",
        at_least(-1),
    )
    negative_prompts: Any = setting(
        None,
        "prompts from beyond the dataset (a list, or a text file with one name a line) asked of every training "
        "image as hard negatives: they join the absent categories num_hard_negatives draws from",
        Valid(is_prompt_list, "a list of names or the path of a text file"),
    )
    max_ann_per_img: int = setting(200, "objects per prompt kept for training", at_least(1))
    augment: Augment = setting(doc="training augmentation", factory=Augment)
    eval_category_chunk: Optional[int] = setting(
        None,
        "evaluation asks every category of every image: chunk them for many-category datasets",
        at_least(1, optional=True),
    )
    validate: Validation = setting(doc="what is checked before a run starts", factory=Validation)
    generate: Optional[ToySpec] = setting(
        None, "toy shapes generated at root on first use, or null for your own data", names_run=False
    )

    def __post_init__(self) -> None:
        # A run directory's section (from_section) hands nested sections over as dicts.
        for name in SPLIT_NAMES:
            value = getattr(self, name)
            if isinstance(value, Mapping):
                setattr(self, name, Split(**value))
        if isinstance(self.augment, Mapping):
            self.augment = Augment(**self.augment)
        if isinstance(self.validate, Mapping):
            self.validate = Validation(**self.validate)
        if isinstance(self.generate, Mapping):
            self.generate = ToySpec(**self.generate)

    def ensure_generated(self) -> None:
        """Write the toy data on first use when this dataset is generated (``generate`` set)."""
        if self.generate is not None:
            from sam3_lora.data import toy

            g = self.generate
            toy.ensure(self.root, domain=g.domain, seed=g.seed, size=g.size, splits=dict(g.splits))

    def negative_prompt_names(self) -> List[str]:
        return read_prompt_list(self.negative_prompts, "dataset.negative_prompts")

    def split(self, name: str) -> Optional[Split]:
        """The split called ``name`` when it is configured, else None."""
        return getattr(self, name) if name in SPLIT_NAMES else None

    @classmethod
    def from_section(cls, section: Mapping[str, Any], where: str = "") -> "DatasetConfig":
        """A resolved ``dataset`` section read as data (a run directory's record, say): Hydra's
        keys (``_target_``, ``_convert_``) are ignored, nothing is imported; unknown or missing
        keys and values out of range are an error naming ``where`` (the file) and the key."""
        found = problems(cls, section, "dataset")
        if found:
            raise DatasetConfigError(f"{where}: " + "; ".join(found) if where else "; ".join(found))
        return cls(**{k: v for k, v in section.items() if k not in HYDRA_KEYS})
