"""Write the toy shapes dataset (Roboflow layout) to a folder.

python tools/make_toy_dataset.py --root data/toy --domain shifted --seed 0
python -m sam3_lora.train dataset.root=data/toy ...      # then train on it like any COCO export
"""

import argparse

from sam3_lora.data import toy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True)
    parser.add_argument("--domain", choices=toy.DOMAINS, default="shifted")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    for split, count in toy.DEFAULT_SPLITS.items():
        parser.add_argument(f"--{split}", type=int, default=count, help=f"images in {split}/")
    args = parser.parse_args()
    splits = {s: getattr(args, s) for s in toy.DEFAULT_SPLITS}
    root = toy.generate(args.root, args.domain, args.seed, args.size, splits)
    print(f"wrote {sum(splits.values())} images ({splits}) to {root}")


if __name__ == "__main__":
    main()
