"""A benchmark prepared once: each dataset found, validated, given its prompts and its few-shot
training splits, and listed in ``manifest.json``.

``prepare`` reads the benchmark as its publishers lay it out (``catalog.py``) and writes, per dataset,
one folder per training set and held-out split in the layout the ``dataset`` group reads::

    OUT/manifest.json
    OUT/<dataset>/{train,valid,test}/_annotations.coco.json   (+ images -> the release's folder)
    OUT/<dataset>/train_shot<K>_seed<S>/_annotations.coco.json (+ images -> the folder its images are in)

Annotations are validated with the project's validator (``data/validate.py``; repaired annotations
are written, the release is never modified), the root class Roboflow adds to every export (a
``supercategory: "none"`` category no annotation uses) is dropped, and each category's name becomes
its prompt (the benchmark's overrides applied). A dataset that is missing or malformed is listed in
the manifest with what is wrong and how to fix it; the others are prepared all the same. The
manifest holds, per dataset: its categories and prompts, image and instance counts per split, the
SHA-256 of every annotation file written, and each few-shot split's origin (published or sampled),
seed, counts and whether it shares an image with a held-out split (it is refused if so).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from sam3_lora.benchmarks.catalog import Benchmark, DatasetLayout, SplitFiles
from sam3_lora.benchmarks.few_shot import DEFINITION, draw_few_shot, images_per_category
from sam3_lora.core.atomic_files import atomic_write_json
from sam3_lora.core.errors import UserError
from sam3_lora.data.anchors import file_digest
from sam3_lora.data.validate import validate_split

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
ANNOTATIONS = "_annotations.coco.json"
IMAGES = "images"
OK, MISSING, MALFORMED = "ok", "missing", "malformed"


class ManifestError(UserError, ValueError):
    """A manifest that cannot be read, or names no usable dataset."""


def few_shot_split(shots: int, seed: int) -> str:
    """The folder name of a few-shot training set (what ``benchmark.train_split`` names)."""
    return f"train_shot{shots}_seed{seed}"


@dataclass
class PrepareRequest:
    benchmark: Benchmark
    root: Path
    out: Path
    shots: Sequence[int] = (10,)
    seeds: Optional[Sequence[int]] = None  # None: the benchmark's published seeds
    few_shot_root: Optional[Path] = None  # RF100-VL's separate 10-shot release
    check_images: bool = True
    datasets: Optional[Sequence[str]] = None  # None: all of the benchmark's


def prepare(req: PrepareRequest) -> dict:
    """Prepare every dataset of the request and write the manifest; returns it."""
    names = list(req.datasets) if req.datasets else req.benchmark.names
    entries = [prepare_dataset(req, req.benchmark.dataset(n)) for n in names]
    manifest = {
        "benchmark": req.benchmark.name,
        "title": req.benchmark.title,
        "release": req.benchmark.release,
        "root": str(req.root),
        "few_shot_root": str(req.few_shot_root) if req.few_shot_root else None,
        "few_shot_definition": DEFINITION,
        "check_images": req.check_images,
        "datasets": entries,
    }
    req.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(req.out / MANIFEST, manifest)
    return manifest


def prepare_dataset(req: PrepareRequest, layout: DatasetLayout) -> dict:
    entry = {"name": layout.name, "super_category": layout.super_category, "notes": list(layout.notes)}
    found = _missing_files(req.root, layout)
    if found:
        return {**entry, "status": MISSING, "problem": "; ".join(found), "fix": _fix_missing(req, layout)}
    cocos, problems = {}, []
    for split, files in layout.splits.items():
        coco, problem = _validated(req.root / files.ann_file, req.root / files.img_folder, req.check_images)
        cocos[split] = coco
        if problem:
            problems.append(f"{split}: {problem}")
    if problems:
        return {
            **entry,
            "status": MALFORMED,
            "problem": "\n".join(problems),
            "fix": "correct the files named above (each problem says how), or re-download the dataset; "
            "then run prepare again",
        }
    dropped = _root_classes(cocos.values())
    prompts = req.benchmark.prompts.get(layout.name, {})
    categories = [
        {"id": c["id"], "name": c["name"], "prompt": prompts.get(str(c["id"]), c["name"])}
        for c in sorted(cocos["train"]["categories"], key=lambda c: c["id"])
        if c["id"] not in dropped
    ]
    out = req.out / layout.name
    splits = {
        split: _write_split(out / split, _as_prompted(cocos[split], categories), req.root / files.img_folder)
        for split, files in layout.splits.items()
    }
    held_out = _image_digests(req.root, layout, ("valid", "test"), cocos)
    few_shot = []
    for shots in req.shots:
        for seed in _seeds(req):
            few_shot.append(_few_shot(req, layout, cocos["train"], categories, shots, seed, held_out, out))
    has_masks = any(a.get("segmentation") for a in cocos["test"]["annotations"])
    return {
        **entry,
        "status": OK,
        "categories": categories,
        "dropped_categories": sorted(dropped),
        "has_masks": has_masks,
        "splits": splits,
        "few_shot": few_shot,
    }


def _missing_files(root: Path, layout: DatasetLayout) -> List[str]:
    missing = [f"{split}: no {root / f.ann_file}" for split, f in layout.splits.items() if not (root / f.ann_file).is_file()]
    if len(missing) == len(layout.splits):  # the dataset is not there at all
        return [f"none of its files are under {root} (e.g. {root / layout.splits['train'].ann_file})"]
    return missing


def _fix_missing(req: PrepareRequest, layout: DatasetLayout) -> str:
    if req.benchmark.name == "rf100vl":
        return (
            f"download it with roboflow/rf100-vl (download_rf100vl(path='{req.root}')), which writes "
            f"{req.root}/{layout.name}/{{train,valid,test}}/_annotations.coco.json; or leave it out (datasets=...)"
        )
    return (
        f"put GLIP's ODinW release (its odinw/ folder) at root={req.root}, so that {req.root / layout.splits['train'].ann_file} "
        "exists; or leave the dataset out (datasets=...)"
    )


def _validated(ann_file: Path, img_folder: Path, check_images: bool):
    """The split's COCO dict (repaired where the validator repairs), or the reason it cannot be used."""
    report, cleaned = validate_split(ann_file, img_folder, check_images)
    if report.errors:
        return None, report.summary()
    return (cleaned if cleaned is not None else json.loads(ann_file.read_text())), None


def _root_classes(cocos: Iterable[dict]) -> set:
    """Roboflow's root class: a category of supercategory "none" that no annotation of any split uses."""
    cocos = list(cocos)
    used = {a["category_id"] for coco in cocos for a in coco["annotations"]}
    return {c["id"] for coco in cocos for c in coco["categories"] if c.get("supercategory") == "none" and c["id"] not in used}


def _as_prompted(coco: dict, categories: List[dict]) -> dict:
    """``coco`` with its categories renamed to their prompts (the name is what the model is asked)."""
    kept = {c["id"] for c in categories}
    return {
        **coco,
        "categories": [{"id": c["id"], "name": c["prompt"], "supercategory": c["name"]} for c in categories],
        "annotations": [a for a in coco["annotations"] if a["category_id"] in kept],
    }


def _write_split(folder: Path, coco: dict, img_folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / IMAGES
    target = os.path.abspath(img_folder)
    if link.is_symlink() and os.readlink(link) != target:
        link.unlink()
    if not link.is_symlink():
        link.symlink_to(target, target_is_directory=True)
    atomic_write_json(folder / ANNOTATIONS, coco, indent=None)
    return {
        "ann_file": str(folder / ANNOTATIONS),
        "img_folder": str(link),
        "images": len(coco["images"]),
        "instances": len(coco["annotations"]),
        "sha256": file_digest(folder / ANNOTATIONS),
    }


def _seeds(req: PrepareRequest) -> Sequence[int]:
    return req.seeds if req.seeds is not None else req.benchmark.published_seeds


def _published(req: PrepareRequest, layout: DatasetLayout, shots: int, seed: int) -> Optional[SplitFiles]:
    """The publisher's own K-shot file for this seed, when it is on disk."""
    if req.benchmark.name == "rf100vl":
        if req.few_shot_root is None or shots != 10 or seed not in req.benchmark.published_seeds:
            return None
        files = layout.splits["train"]
        found = SplitFiles(str(req.few_shot_root / files.ann_file), str(req.few_shot_root / files.img_folder))
    elif layout.few_shot:
        path = req.root / layout.few_shot.format(shots=shots, seed=seed)
        found = SplitFiles(str(path), str(req.root / layout.splits["train"].img_folder))
    else:
        return None
    return found if Path(found.ann_file).is_file() else None


def _few_shot(req, layout, train: dict, categories, shots: int, seed: int, held_out: Dict[str, str], out: Path) -> dict:
    name = few_shot_split(shots, seed)
    published = _published(req, layout, shots, seed)
    if published is not None:
        coco, problem = _validated(Path(published.ann_file), Path(published.img_folder), req.check_images)
        if problem:
            return {"split": name, "shots": shots, "seed": seed, "status": MALFORMED, "problem": problem}
        coco, problem = _on_train_categories(coco, train)
        if problem:
            return {"split": name, "shots": shots, "seed": seed, "status": MALFORMED, "problem": problem}
        origin, img_folder = f"published: {published.ann_file}", Path(published.img_folder)
    else:
        coco = draw_few_shot(train, shots, seed)
        origin, img_folder = "sampled", req.root / layout.splits["train"].img_folder
    shared = _shared_images(coco, img_folder, held_out)
    record = {"split": name, "shots": shots, "seed": seed, "origin": origin}
    if shared:
        return {
            **record,
            "status": MALFORMED,
            "problem": f"{len(shared)} of its images are also held-out images ({'; '.join(shared[:3])})",
        }
    written = _write_split(out / name, _as_prompted(coco, categories), img_folder)
    per_category = images_per_category(coco)
    return {**record, "status": OK, **written, "images_per_category": {str(k): v for k, v in per_category.items()}}


def _on_train_categories(coco: dict, train: dict):
    """A published few-shot file with the full training split's category ids, matched by name (a
    release may number them otherwise, e.g. with or without Roboflow's root class)."""
    ids = {c["name"]: c["id"] for c in train["categories"]}
    own = {c["id"]: c["name"] for c in coco["categories"]}
    unknown = sorted({own.get(a["category_id"], str(a["category_id"])) for a in coco["annotations"]} - set(ids))
    if unknown:
        return None, f"categories {unknown} are not categories of the training split"
    annotations = [{**a, "category_id": ids[own[a["category_id"]]]} for a in coco["annotations"]]
    return {**coco, "categories": train["categories"], "annotations": annotations}, None


def _image_digests(root: Path, layout: DatasetLayout, splits: Sequence[str], cocos: Dict[str, dict]) -> Dict[str, str]:
    """The content digest of every image of ``splits``, naming the split and file it belongs to."""
    digests = {}
    for split in splits:
        folder = root / layout.splits[split].img_folder
        for im in cocos[split]["images"]:
            path = folder / im["file_name"]
            if path.is_file():
                digests.setdefault(file_digest(path), f"{split}/{im['file_name']}")
    return digests


def _shared_images(coco: dict, img_folder: Path, held_out: Dict[str, str]) -> List[str]:
    shared = []
    for im in coco["images"]:
        path = img_folder / im["file_name"]
        if path.is_file() and (where := held_out.get(file_digest(path))):
            shared.append(f"{im['file_name']} = {where}")
    return shared


# ----------------------------------------------------------------------------------- reading
def read_manifest(prepared: Path) -> dict:
    path = Path(prepared) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ManifestError(
            f"{path}: cannot be read ({e}); prepare the benchmark first: "
            "python -m sam3_lora.benchmark prepare name=<rf100vl|odinw13> root=<release> out=<prepared>"
        ) from None


def usable(manifest: dict) -> List[str]:
    return [d["name"] for d in manifest["datasets"] if d["status"] == OK]


def summary(manifest: dict) -> str:
    """What ``prepare`` prints: one line per dataset, problems and fixes in full."""
    lines = [f"{manifest['title']}: {len(usable(manifest))} of {len(manifest['datasets'])} datasets ready"]
    absent = [d for d in manifest["datasets"] if d["status"] == MISSING and d["problem"].startswith("none of its files")]
    for d in manifest["datasets"]:
        if d in absent:
            continue
        if d["status"] == OK:
            s = d["splits"]
            shots = ", ".join(
                f"{f['split']} ({f['origin'].split(':')[0]}, {f.get('images', 0)} images)" if f["status"] == OK
                else f"{f['split']}: {f['status']}: {f['problem']}"
                for f in d["few_shot"]
            )
            lines.append(
                f"  ok         {d['name']}: {len(d['categories'])} categories, "
                + ", ".join(f"{k} {v['images']} images/{v['instances']} instances" for k, v in s.items())
                + (f"; {shots}" if shots else "")
            )
        else:
            lines.append(f"  {d['status']:<10} {d['name']}: {d['problem']}\n             fix: {d['fix']}")
    if absent:
        names = ", ".join(d["name"] for d in absent)
        lines.append(f"  missing    {len(absent)} datasets with none of their files under {manifest['root']}: {names}")
        lines.append(f"             fix, e.g. {absent[0]['name']}: {absent[0]['fix']}")
    return "\n".join(lines)
