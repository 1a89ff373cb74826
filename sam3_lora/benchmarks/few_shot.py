"""K-shot training splits drawn by a seed, where a benchmark publishes none for that seed.

The definition is the one behind ODinW's published files (GLIP's few-shot sampler, which SAM3's
ODinW 10-shot results train on): **K images per category**. The training split's image ids are
sorted and shuffled by ``random.Random(seed)``; walking them in that order, an image is kept when
at least one category it shows still has fewer than K kept images, and each kept image counts once
for every category it shows. A kept image keeps *all* its annotations, so nothing in a kept image is
left unlabelled. Two consequences, recorded in the file's ``info.few_shot``:

* a category seen in a multi-category image may end with more than K images (``per_category``
  says how many each has);
* a category with fewer than K training images keeps all of them (listed as ``short``).

Images without annotations are never drawn. Only the training split is read, so no valid or test
image can be drawn; the split's category list is kept whole (ids and prompts do not change).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Dict, List

DEFINITION = (
    "K images per category (GLIP's ODinW sampler): sorted image ids shuffled by random.Random(seed); an image is "
    "kept while a category it shows has fewer than K kept images; kept images keep all their annotations"
)


def draw_few_shot(coco: dict, shots: int, seed: int) -> dict:
    """The K-shot subset of a COCO training split ``coco``, as a COCO dict with its record in ``info``."""
    categories_of: Dict[int, set] = defaultdict(set)
    for a in coco["annotations"]:
        categories_of[a["image_id"]].add(a["category_id"])
    order = sorted(categories_of)
    random.Random(seed).shuffle(order)
    kept: List[int] = []
    count: Counter = Counter()
    for image_id in order:
        shown = categories_of[image_id]
        if any(count[c] < shots for c in shown):
            kept.append(image_id)
            count.update(shown)
    chosen = set(kept)
    category_ids = [c["id"] for c in coco["categories"]]
    record = {
        "shots": shots,
        "seed": seed,
        "definition": DEFINITION,
        "per_category": {str(c): count[c] for c in category_ids},
        "short": [c for c in category_ids if count[c] < shots],
    }
    return {
        **coco,
        "info": {**(coco.get("info") or {}), "few_shot": record},
        "images": [im for im in coco["images"] if im["id"] in chosen],
        "annotations": [a for a in coco["annotations"] if a["image_id"] in chosen],
    }


def images_per_category(coco: dict) -> Dict[int, int]:
    """How many images of ``coco`` show each category (the count the definition holds to K)."""
    seen: Dict[int, set] = defaultdict(set)
    for a in coco["annotations"]:
        seen[a["category_id"]].add(a["image_id"])
    return {c["id"]: len(seen[c["id"]]) for c in coco["categories"]}
