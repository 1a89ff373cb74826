"""The transfer benchmarks of the SAM3 paper, as their publishers lay them out on disk.

Nothing here reads data: each benchmark is a list of datasets, and each dataset says where its
splits' annotation files and images are below the benchmark's root, where the published few-shot
training files are, and which prompt each category gets.

* **RF100-VL** (roboflow/rf100-vl, the ``rf100vl`` package's ``download_rf100vl``): one Roboflow COCO
  export per dataset, ``ROOT/<dataset>/{train,valid,test}/_annotations.coco.json`` beside the images;
  the folder names and super-categories are the publishers' (``assets/rf100vl_datasets.csv``). Its
  few-shot release is a second download (``download_rf100vl_fsod``, workspace ``rf-100-vl-fsod``)
  in the same layout whose ``train`` split is the 10-shot set, one draw (seed 0).
* **ODinW13** (the 13 "Object Detection in the Wild" datasets of GLIP, microsoft/GLIP
  ``configs/odinw_13/*.yaml``, as SAM3's ``sam3/train/configs/odinw13/`` read them): each dataset in
  its own folder below ``ROOT`` (``odinw/`` of the GLIP download), each split a folder holding
  ``annotations_without_background.json`` and the images; ``pistols`` keeps every split in one
  ``export/`` folder. The few-shot files are published inside the training folder:
  ``fewshot_train_shot{1,3,5,10}_seed{3,30,300}.json``.

The prompt of a category is its name, except where SAM3's ODinW configs override it
(``odinw35_prompts`` in ``odinw_text_only_train.yaml``): those overrides are in ``PROMPTS``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from sam3_lora.core.errors import UserError

ASSETS = Path(__file__).parent / "assets"
SPLITS = ("train", "valid", "test")


class UnknownBenchmarkError(UserError, ValueError):
    """A benchmark or dataset name the catalog does not hold."""


@dataclass(frozen=True)
class SplitFiles:
    """Where one split is below the benchmark's root: its annotation file and its images' folder."""

    ann_file: str
    img_folder: str


@dataclass(frozen=True)
class DatasetLayout:
    """One dataset of a benchmark: its splits' files and its published few-shot files (relative to
    the root; ``{shots}`` and ``{seed}`` are filled in)."""

    name: str
    splits: Dict[str, SplitFiles]
    few_shot: Optional[str] = None
    super_category: Optional[str] = None
    # Where the split scored as "test" is really another split (PascalVOC's test is its valid split).
    notes: Tuple[str, ...] = ()


@dataclass(frozen=True)
class PaperFigures:
    """Box AP the SAM3 paper reports for the benchmark (appendix F.3, Tab. 36): the mean over its datasets."""

    zero_shot: float
    ten_shot: float
    ten_shot_std: Optional[float]
    full: float
    source: str = "SAM3 paper, appendix F.3, Tab. 36 (box AP, mean over datasets)"


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    datasets: Tuple[DatasetLayout, ...]
    paper: PaperFigures
    # The seeds of the published few-shot files; a sampled split uses any seed.
    published_seeds: Tuple[int, ...] = ()
    release: str = ""
    group_by: Optional[str] = None  # what the report's per-group means are over ("super-category")
    prompts: Dict[str, Dict[str, str]] = field(default_factory=dict)

    def dataset(self, name: str) -> DatasetLayout:
        for d in self.datasets:
            if d.name == name:
                return d
        raise UnknownBenchmarkError(
            f"benchmark {self.name} has no dataset '{name}'; its datasets: {', '.join(d.name for d in self.datasets)}"
        )

    @property
    def names(self) -> List[str]:
        return [d.name for d in self.datasets]


# ------------------------------------------------------------------------------------- RF100-VL
RF100VL_ANNOTATIONS = "_annotations.coco.json"


def _rf100vl_dataset(name: str, super_category: str) -> DatasetLayout:
    return DatasetLayout(
        name=name,
        splits={s: SplitFiles(f"{name}/{s}/{RF100VL_ANNOTATIONS}", f"{name}/{s}") for s in SPLITS},
        super_category=super_category,
    )


def _rf100vl_datasets() -> Tuple[DatasetLayout, ...]:
    with open(ASSETS / "rf100vl_datasets.csv", newline="") as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        return tuple(_rf100vl_dataset(r["dataset"], r["super_category"]) for r in rows)


# --------------------------------------------------------------------------------------- ODinW13
ODINW_ANNOTATIONS = "annotations_without_background.json"
ODINW_FEW_SHOT = "fewshot_train_shot{shots}_seed{seed}.json"


def _odinw_dataset(name: str, folder: str, valid_as_test: bool = False) -> DatasetLayout:
    """A GLIP ODinW dataset: ``folder/{train,valid,test}/annotations_without_background.json``."""
    test = "valid" if valid_as_test else "test"
    splits = {
        "train": SplitFiles(f"{folder}/train/{ODINW_ANNOTATIONS}", f"{folder}/train"),
        "valid": SplitFiles(f"{folder}/valid/{ODINW_ANNOTATIONS}", f"{folder}/valid"),
        "test": SplitFiles(f"{folder}/{test}/{ODINW_ANNOTATIONS}", f"{folder}/{test}"),
    }
    notes = ("its test split is its valid split (GLIP publishes no other): selecting on valid selects on test",) if valid_as_test else ()
    return DatasetLayout(name, splits, few_shot=f"{folder}/train/{ODINW_FEW_SHOT}", notes=notes)


def _odinw_flat(name: str, folder: str) -> DatasetLayout:
    """An ODinW dataset with every split in one folder: ``folder/{train,val,test}_annotations_without_background.json``."""
    files = {"train": "train", "valid": "val", "test": "test"}
    splits = {s: SplitFiles(f"{folder}/{f}_{ODINW_ANNOTATIONS}", folder) for s, f in files.items()}
    return DatasetLayout(name, splits, few_shot=f"{folder}/{ODINW_FEW_SHOT}")


ODINW13_DATASETS = (
    _odinw_dataset("AerialMaritimeDrone_large", "AerialMaritimeDrone/large"),
    _odinw_dataset("Aquarium", "Aquarium/Aquarium Combined.v2-raw-1024.coco"),
    _odinw_dataset("CottontailRabbits", "CottontailRabbits"),
    _odinw_dataset("EgoHands_generic", "EgoHands/generic"),
    _odinw_dataset("NorthAmericaMushrooms", "NorthAmericaMushrooms/North American Mushrooms.v1-416x416.coco"),
    _odinw_dataset("Packages", "Packages/Raw"),
    _odinw_dataset("PascalVOC", "PascalVOC", valid_as_test=True),
    _odinw_flat("pistols", "pistols/export"),
    _odinw_dataset("pothole", "pothole"),
    _odinw_dataset("Raccoon", "Raccoon/Raccoon.v2-raw.coco"),
    _odinw_dataset("ShellfishOpenImages", "ShellfishOpenImages/raw"),
    _odinw_dataset("thermalDogsAndPeople", "thermalDogsAndPeople"),
    _odinw_dataset("VehiclesOpenImages", "VehiclesOpenImages/416x416"),
)

# SAM3's own prompts where a category's name is not what it shows (odinw35_prompts): by category id.
ODINW13_PROMPTS = {
    "AerialMaritimeDrone_large": {"1": "boat", "2": "car", "3": "dock", "4": "jet ski", "5": "boat lift"},
    "NorthAmericaMushrooms": {"1": "chicken of wood", "2": "chanterelle"},
}

BENCHMARKS: Dict[str, Benchmark] = {
    "rf100vl": Benchmark(
        name="rf100vl",
        title="RF100-VL",
        datasets=_rf100vl_datasets(),
        paper=PaperFigures(zero_shot=15.2, ten_shot=36.5, ten_shot_std=None, full=61.6),
        published_seeds=(0,),
        release="roboflow/rf100-vl: download_rf100vl (full) and download_rf100vl_fsod (10-shot, seed 0)",
        group_by="super-category",
    ),
    "odinw13": Benchmark(
        name="odinw13",
        title="ODinW13",
        datasets=ODINW13_DATASETS,
        paper=PaperFigures(zero_shot=61.0, ten_shot=71.8, ten_shot_std=0.4, full=75.8),
        published_seeds=(3, 30, 300),
        release="GLIP's ODinW download (microsoft/GLIP configs/odinw_13), as SAM3's configs/odinw13 read it",
        prompts=ODINW13_PROMPTS,
    ),
}


def benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise UnknownBenchmarkError(f"name={name}: no such benchmark; choose one of {', '.join(BENCHMARKS)}") from None
