"""The shipped COCO val2017 subsets (sam3_lora/data/lists/), written from the shipped list of all 5000
val2017 ids by the rule declared before any scoring; or, with ``--check``, that list checked against your
copy of COCO's instances_val2017.json.

    python tools/coco_val2017_subsets.py            # rewrite coco_val2017_{test500,valid250,anchors}.txt
    python tools/coco_val2017_subsets.py --check /data/coco/annotations/instances_val2017.json

The rule: every val2017 id, sorted, shuffled by ``random.Random(SEED)``; the first 500 are the
retention test split, the next 250 its valid split, the other 4250 the distillation anchors; each list
is written sorted. The three are disjoint by construction and together are val2017 (tests/test_coco_retention.py
draws them again and compares).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Dict, List, Sequence

LISTS = Path(__file__).resolve().parents[1] / "sam3_lora" / "data" / "lists"
FULL = "coco_val2017"
SEED = "sam3_lora/coco_val2017"
# name of the shipped list -> (first, last) position in the shuffled order; what each is for
SUBSETS = {
    "coco_val2017_test500": (0, 500, "the retention test split (scored before and after tuning)"),
    "coco_val2017_valid250": (500, 750, "the retention valid split (the SA-Co threshold, the tradeoff budget)"),
    "coco_val2017_anchors": (750, None, "distillation anchors: every val2017 image no score uses"),
}


def read_ids(path: Path) -> List[int]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [int(line) for line in lines if line and not line.startswith("#")]


def draw(ids: Sequence[int]) -> Dict[str, List[int]]:
    """The rule: the shipped subsets of ``ids`` (all of val2017)."""
    order = random.Random(SEED).sample(sorted(ids), len(ids))
    return {name: sorted(order[first:last]) for name, (first, last, _) in SUBSETS.items()}


def header(name: str, count: int, total: int) -> str:
    first, last, use = SUBSETS[name]
    return (
        f"# COCO val2017: {count} of its {total} image ids, {use}.\n"
        f"# Drawn from {FULL}.txt by a rule fixed before any scoring (tools/coco_val2017_subsets.py):\n"
        f'# order = random.Random("{SEED}").sample(sorted(ids), {total}); this list is sorted(order[{first}:'
        f"{'' if last is None else last}]).\n"
        "# The test, valid and anchor lists are disjoint; together they are val2017.\n"
    )


def write(lists: Path = LISTS) -> Dict[str, List[int]]:
    ids = read_ids(lists / f"{FULL}.txt")
    drawn = draw(ids)
    for name, subset in drawn.items():
        text = header(name, len(subset), len(ids)) + "".join(f"{i}\n" for i in subset)
        (lists / f"{name}.txt").write_text(text)
    return drawn


def check(ann_file: Path, lists: Path = LISTS) -> int:
    """0 when the shipped list is exactly the image ids of ``ann_file``; 1 (and what differs) otherwise."""
    found = {im["id"] for im in json.loads(Path(ann_file).read_text())["images"]}
    shipped = set(read_ids(lists / f"{FULL}.txt"))
    if found == shipped:
        print(f"{ann_file}: its {len(found)} image ids are the shipped {FULL}.txt")
        return 0
    print(
        f"{ann_file}: {len(found - shipped)} image ids not in {FULL}.txt, {len(shipped - found)} of it not in the file "
        f"(first of each: {sorted(found - shipped)[:5]}, {sorted(shipped - found)[:5]}); is it instances_val2017.json?"
    )
    return 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", metavar="ANN_FILE", help="compare the shipped list with this instances_val2017.json")
    args = parser.parse_args(argv)
    if args.check:
        return check(Path(args.check))
    for name, subset in write().items():
        print(f"{LISTS / name}.txt: {len(subset)} ids")
    return 0


if __name__ == "__main__":
    sys.exit(main())
