"""Stand-in releases of the benchmarks: three small toy-world datasets (``data/toy.py``'s shapes) laid
out file for file as the publishers lay out RF100-VL and ODinW13, under real dataset names of the
catalog, so ``prepare``, the experiments and the report run end to end on CPU with nothing downloaded.

Each stand-in keeps what makes the real layout particular: RF100-VL's Roboflow root class (category
0, supercategory "none") and its separate 10-shot release (``<few_shot_root>/<dataset>/train``);
ODinW's ``annotations_without_background.json`` per split folder, its published
``fewshot_train_shot10_seed{3,30,300}.json`` beside the training images, and ``pistols``' one-folder
layout. One dataset of each is boxes-only (no segmentation), as many real ones are. The figures a
stand-in gives say nothing about SAM3 on the benchmark: they only show that the chain runs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Tuple

from sam3_lora.benchmarks.catalog import benchmark
from sam3_lora.benchmarks.few_shot import draw_few_shot
from sam3_lora.core.atomic_files import atomic_write_json
from sam3_lora.data import toy

# (dataset, toy domain, boxes only): one dataset the toy base knows, two it does not.
STAND_INS: Dict[str, Tuple[Tuple[str, str, bool], ...]] = {
    "rf100vl": (("aquarium-combined", "base", False), ("bees", "shifted", False), ("signatures", "shifted", True)),
    "odinw13": (("Aquarium", "base", False), ("Raccoon", "shifted", False), ("pistols", "shifted", True)),
}
SPLIT_SIZES = {"train": 40, "valid": 8, "test": 12}
IMAGE_SIZE = 128


def generate(name: str, root, few_shot_root=None, seed: int = 0) -> Dict[str, Path]:
    """Write the stand-in release of benchmark ``name`` below ``root`` (and RF100-VL's 10-shot release
    below ``few_shot_root``); returns where each dataset's folder is."""
    bench, root = benchmark(name), Path(root)
    written = {}
    for i, (dataset, domain, boxes_only) in enumerate(STAND_INS[name]):
        layout = bench.dataset(dataset)
        with tempfile.TemporaryDirectory() as tmp:
            toy.generate(tmp, domain=domain, seed=seed * 100 + i, size=IMAGE_SIZE, splits=dict(SPLIT_SIZES))
            cocos = {}
            for split, files in layout.splits.items():
                coco = json.loads((Path(tmp) / split / toy.ANNOTATIONS).read_text())
                if boxes_only:
                    for a in coco["annotations"]:
                        a["segmentation"] = []
                if name == "rf100vl":
                    coco = _with_roboflow_root_class(coco, dataset)
                cocos[split] = coco
                folder = root / files.img_folder
                folder.mkdir(parents=True, exist_ok=True)
                for im in coco["images"]:
                    # file names carry the split: pistols keeps all three splits in one folder
                    shutil.copyfile(Path(tmp) / split / im["file_name"], folder / im["file_name"])
                atomic_write_json(root / files.ann_file, coco, indent=None)
            if layout.few_shot:
                for s in bench.published_seeds:
                    atomic_write_json(root / layout.few_shot.format(shots=10, seed=s), draw_few_shot(cocos["train"], 10, s))
            if name == "rf100vl" and few_shot_root is not None:
                _rf100vl_few_shot_release(Path(few_shot_root), layout.splits["train"], root, cocos["train"])
        written[dataset] = root / layout.splits["train"].img_folder
    return written


def _with_roboflow_root_class(coco: dict, dataset: str) -> dict:
    """As a Roboflow export: category 0 is the project's name (supercategory "none"), every other
    category its child."""
    categories = [{"id": 0, "name": dataset, "supercategory": "none"}]
    categories += [{**c, "supercategory": dataset} for c in coco["categories"]]
    return {**coco, "categories": categories}


def _rf100vl_few_shot_release(few_shot_root: Path, train_files, root: Path, train: dict) -> None:
    """RF100-VL's 10-shot release: the same layout, its train split the 10-shot set (seed 0), images
    copied under their own folder as the release ships them."""
    shot = draw_few_shot(train, 10, 0)
    shot.pop("info", None)
    folder = few_shot_root / train_files.img_folder
    folder.mkdir(parents=True, exist_ok=True)
    for im in shot["images"]:
        shutil.copyfile(root / train_files.img_folder / im["file_name"], folder / im["file_name"])
    atomic_write_json(few_shot_root / train_files.ann_file, shot, indent=None)


def stand_in_names(name: str) -> Tuple[str, ...]:
    return tuple(d for d, _, _ in STAND_INS[name])
