"""A synthetic COCO dataset of named shapes, generated deterministically from a seed.

A miniature of adapting SAM3 to a new domain. Two visual domains, each with its own
concepts, some shared:

* ``base`` (the frozen base's own domain): bright filled circles, squares and triangles
  on a dark, plain background;
* ``shifted`` (the target domain): shapes in other colours with a light outline on a
  noisy, tinted, mid-dark background: circles and squares (shared concepts, new look) and
  stars and crosses (new concepts); no triangles. Shapes stay brighter than the ground
  in both domains, so adapting to the new look need not unlearn the old one (a domain of
  reversed contrast makes every method forget the source completely).

Category ids are the same in every dataset (``CATEGORIES``). A ``train`` split lists only
its domain's concepts, as a user's own export would; held-out splits (``valid``, ``test``)
list every concept, so evaluation also prompts concepts absent from the domain (triangle
on shifted images, star and cross on base images): a model that fires on every prompt
pays for it there.

Layout is Roboflow's: ``ROOT/{train,valid,test}/_annotations.coco.json`` beside the
images, with polygon segmentations, ``iscrowd`` on every annotation.

    python tools/make_toy_dataset.py --root data/toy --domain shifted
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from sam3_lora.core.atomic_files import atomic_write_json

CATEGORIES = ("circle", "square", "triangle", "star", "cross")
DOMAIN_CONCEPTS = {"base": ("circle", "square", "triangle"), "shifted": ("circle", "square", "star", "cross")}
DOMAINS = tuple(DOMAIN_CONCEPTS)
DEFAULT_SPLITS = {"train": 48, "valid": 16, "test": 16}
ANNOTATIONS = "_annotations.coco.json"
# Bump when the generator's output changes, so cached copies are regenerated.
# Per domain: the toy base's cache key depends on the base domain's images only.
GENERATOR_VERSIONS = {"base": 3, "shifted": 4}


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> List[Tuple[float, float]]:
    if kind == "circle":
        n = 24
        return [(cx + r * math.cos(2 * math.pi * i / n), cy + r * math.sin(2 * math.pi * i / n)) for i in range(n)]
    if kind == "star":  # five points: outer and inner radius alternate
        return [
            (cx + rr * math.cos(angle + math.pi * i / 5), cy + rr * math.sin(angle + math.pi * i / 5))
            for i, rr in enumerate([r * 1.3, r * 0.55] * 5)
        ]
    if kind == "cross":  # a plus sign: arms of half-width 0.4 r reaching 1.2 r, rotated by angle
        w, a = 0.4 * r, 1.2 * r
        outline = [
            (w, a),
            (w, w),
            (a, w),
            (a, -w),
            (w, -w),
            (w, -a),
            (-w, -a),
            (-w, -w),
            (-a, -w),
            (-a, w),
            (-w, w),
            (-w, a),
        ]
        c, s_ = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s_, cy + x * s_ + y * c) for x, y in outline]
    corners = 4 if kind == "square" else 3
    radius = r * (1.25 if kind == "square" else 1.3)
    return [
        (
            cx + radius * math.cos(angle + 2 * math.pi * i / corners),
            cy + radius * math.sin(angle + 2 * math.pi * i / corners),
        )
        for i in range(corners)
    ]


def _background(rng: random.Random, size: int, domain: str) -> Image.Image:
    if domain == "base":
        shade = rng.randint(20, 60)
        return Image.new("RGB", (size, size), (shade, shade, shade + 10))
    # Noise from the seeded generator (PIL's effect_noise draws from C rand(), which no seed reaches).
    sigma = rng.uniform(20, 40)
    grey = np.random.default_rng(rng.getrandbits(64)).normal(70, sigma, (size, size))
    noise = Image.fromarray(grey.clip(0, 255).astype(np.uint8)).convert("RGB")
    tint = Image.new("RGB", (size, size), (rng.randint(40, 80), rng.randint(60, 100), rng.randint(90, 130)))
    return Image.blend(tint, noise, 0.5).filter(ImageFilter.GaussianBlur(0.6))


# Each category has its own hue per domain (a cue a tiny model picks up quickly); the
# shifted domain changes hues, contrast and background together.
PALETTES = {
    "base": {"circle": (230, 80, 60), "square": (80, 220, 90), "triangle": (90, 120, 240)},
    "shifted": {"circle": (235, 205, 70), "square": (210, 90, 210), "star": (70, 215, 230), "cross": (245, 150, 40)},
}


def _colour(rng: random.Random, domain: str, kind: str) -> Tuple[int, int, int]:
    return tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in PALETTES[domain][kind])


def _image(rng: random.Random, size: int, domain: str):
    image = _background(rng, size, domain)
    draw = ImageDraw.Draw(image)
    shapes, placed = [], []
    for _ in range(rng.randint(1, 2)):
        for _attempt in range(20):
            r = rng.uniform(0.15, 0.25) * size
            cx, cy = rng.uniform(r * 1.4, size - r * 1.4), rng.uniform(r * 1.4, size - r * 1.4)
            if all(math.hypot(cx - x, cy - y) > 1.4 * (r + pr) for x, y, pr in placed):
                break
        else:
            continue
        placed.append((cx, cy, r))
        kind = rng.choice(DOMAIN_CONCEPTS[domain])
        poly = _polygon(kind, cx, cy, r, rng.uniform(0, 2 * math.pi))
        outline = (235, 235, 235) if domain == "shifted" else None
        draw.polygon(poly, fill=_colour(rng, domain, kind), outline=outline)
        shapes.append((kind, poly))
    return image, shapes


def _annotation(ann_id: int, image_id: int, kind: str, poly) -> Dict:
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    x0, y0 = min(xs), min(ys)
    w, h = max(xs) - x0, max(ys) - y0
    area = 0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(poly))))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": CATEGORIES.index(kind) + 1,
        "bbox": [round(v, 2) for v in (x0, y0, w, h)],
        "area": round(area, 2),
        "segmentation": [[round(c, 2) for p in poly for c in p]],
        "iscrowd": 0,
    }


def generate(root, domain: str = "base", seed: int = 0, size: int = 128, splits: Dict[str, int] = None) -> Path:
    """Write the dataset under ``root`` (idempotent: same arguments, same bytes)."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown toy domain '{domain}'; choose one of {', '.join(DOMAINS)}")
    root = Path(root)
    splits = splits or DEFAULT_SPLITS
    every = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CATEGORIES)]
    own = [c for c in every if c["name"] in DOMAIN_CONCEPTS[domain]]
    for split_index, (split, count) in enumerate(splits.items()):
        rng = random.Random(f"{seed}-{domain}-{split_index}")
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            image, shapes = _image(rng, size, domain)
            name = f"{split}_{i:04d}.png"
            image.save(folder / name)
            image_id = i + 1
            images.append({"id": image_id, "file_name": name, "width": size, "height": size})
            for kind, poly in shapes:
                annotations.append(_annotation(len(annotations) + 1, image_id, kind, poly))
        coco = {
            "info": {"description": f"sam3_lora toy shapes, domain={domain}, seed={seed}"},
            "images": images,
            "annotations": annotations,
            "categories": own if split == "train" else every,
        }
        atomic_write_json(folder / ANNOTATIONS, coco, indent=None)
    stamp = {"domain": domain, "seed": seed, "size": size, "splits": splits, "version": GENERATOR_VERSIONS[domain]}
    atomic_write_json(root / "toy.json", stamp, indent=None)
    return root


def ensure(root, domain: str = "base", seed: int = 0, size: int = 128, splits: Dict[str, int] = None) -> Path:
    """Generate the dataset on first use; reuse it while its parameters are unchanged."""
    root = Path(root)
    splits = splits or DEFAULT_SPLITS
    stamp = {"domain": domain, "seed": seed, "size": size, "splits": splits, "version": GENERATOR_VERSIONS[domain]}
    try:
        if json.loads((root / "toy.json").read_text()) == stamp:
            return root
    except (OSError, ValueError):
        pass
    return generate(root, domain, seed, size, splits)
