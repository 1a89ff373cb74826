"""Toy world v5: a base domain where a concept is its shape, and a target domain in a new look.

What the quick start's world (``data/toy.py``) cannot measure, this one is built to: there each concept
had its own hue, so the base could name shapes by colour, and the target re-coloured them, so its
labels contradicted the base and every method that fitted it overwrote what the base knew. Here:

* **base** (what the foundation-like base is pretrained on): twelve concepts told apart by shape
  only (``BASE_CONCEPTS``). Colour, size, rotation, fill texture and background vary across every
  concept: each (concept, colour) pair appears in every split at least ``min_per_pair`` times (the
  instances are dealt from a shuffled deck of the pairs, so the counts are balanced by construction).
* **target** (the domain a user adapts to): another look (patterned fills in other colours, a light
  outline, a noisy tinted ground) holding four of the base's concepts, labelled as the base labels
  them, and four new ones (``NEW_CONCEPTS``).

Held-out splits list every concept of both domains, so each prompts concepts absent from its images.
The layout is Roboflow's (``ROOT/{train,valid,test}/_annotations.coco.json`` beside the images), with
polygon masks and ``iscrowd`` on every annotation. Same arguments, same bytes.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from sam3_lora.core.atomic_files import atomic_write_json

BASE_CONCEPTS = (
    "circle", "square", "triangle", "pentagon", "hexagon", "star",
    "cross", "diamond", "arrow", "heart", "crescent", "chevron",
)  # fmt: skip
KNOWN_IN_TARGET = ("circle", "square", "star", "cross")
NEW_CONCEPTS = ("tee", "trapezoid", "hourglass", "semicircle")
CATEGORIES = BASE_CONCEPTS + NEW_CONCEPTS
DOMAIN_CONCEPTS = {"base": BASE_CONCEPTS, "target": KNOWN_IN_TARGET + NEW_CONCEPTS}
# Each domain's colours: every concept is drawn in each of them, so colour says nothing of the concept.
COLOURS = {
    "base": {"red": (220, 70, 60), "green": (70, 200, 90), "blue": (80, 120, 235), "yellow": (230, 210, 70)},
    "target": {"violet": (170, 90, 220), "orange": (245, 150, 40), "cyan": (70, 215, 230), "pink": (240, 120, 170)},
}
TEXTURES = {"base": ("solid", "stripes", "dots"), "target": ("checks", "stripes")}
ANNOTATIONS = "_annotations.coco.json"
GENERATOR_VERSION = 5
MAX_PER_IMAGE = 3


# ------------------------------------------------------------------------------------ shapes
def _regular(n: int, r: float, start: float = -math.pi / 2) -> List[Tuple[float, float]]:
    return [(r * math.cos(start + 2 * math.pi * i / n), r * math.sin(start + 2 * math.pi * i / n)) for i in range(n)]


def _outline(kind: str) -> List[Tuple[float, float]]:
    """The shape's outline around the origin, at unit size (about radius 1)."""
    if kind == "circle":
        return _regular(28, 1.0)
    if kind == "square":
        return _regular(4, 1.25, math.pi / 4)
    if kind == "triangle":
        return _regular(3, 1.3)
    if kind == "pentagon":
        return _regular(5, 1.15)
    if kind == "hexagon":
        return _regular(6, 1.1)
    if kind == "star":
        return [(p * math.cos(-math.pi / 2 + math.pi * i / 5), p * math.sin(-math.pi / 2 + math.pi * i / 5))
                for i, p in enumerate([1.3, 0.55] * 5)]  # fmt: skip
    if kind == "cross":
        w, a = 0.4, 1.2
        return [(w, a), (w, w), (a, w), (a, -w), (w, -w), (w, -a), (-w, -a), (-w, -w), (-a, -w), (-a, w), (-w, w), (-w, a)]
    if kind == "diamond":
        return [(0, -1.4), (0.75, 0), (0, 1.4), (-0.75, 0)]
    if kind == "arrow":
        return [(-1.2, -0.35), (0.2, -0.35), (0.2, -0.9), (1.3, 0), (0.2, 0.9), (0.2, 0.35), (-1.2, 0.35)]
    if kind == "heart":
        pts = []
        for i in range(32):
            t = 2 * math.pi * i / 32
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((x / 13, -y / 13))
        return pts
    if kind == "crescent":
        outer = [(math.cos(t), math.sin(t)) for t in np.linspace(-0.45 * math.pi, 1.45 * math.pi, 22)]
        inner = [(0.45 + 0.75 * math.cos(t), 0.75 * math.sin(t)) for t in np.linspace(1.3 * math.pi, -0.3 * math.pi, 16)]
        return [(x * 1.2, y * 1.2) for x, y in outer + inner]
    if kind == "chevron":
        return [(-1.1, -0.9), (-0.4, -0.9), (0.5, 0), (-0.4, 0.9), (-1.1, 0.9), (-0.2, 0)]
    if kind == "tee":
        return [(-1.2, -1.0), (1.2, -1.0), (1.2, -0.45), (0.35, -0.45), (0.35, 1.1), (-0.35, 1.1), (-0.35, -0.45), (-1.2, -0.45)]
    if kind == "trapezoid":
        return [(-0.6, -0.8), (0.6, -0.8), (1.3, 0.8), (-1.3, 0.8)]
    if kind == "hourglass":
        return [(-1.0, -1.1), (1.0, -1.1), (0.15, 0), (1.0, 1.1), (-1.0, 1.1), (-0.15, 0)]
    if kind == "semicircle":
        return [(1.3 * math.cos(t), 1.3 * math.sin(t) - 0.4) for t in np.linspace(0, math.pi, 20)]
    raise ValueError(f"unknown toy concept '{kind}'")


def _placed(kind: str, cx: float, cy: float, r: float, angle: float) -> List[Tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in _outline(kind)]


# ------------------------------------------------------------------------------------ drawing
def _background(rng: random.Random, size: int, domain: str) -> Image.Image:
    noise_rng = np.random.default_rng(rng.getrandbits(64))
    if domain == "base":  # dark grounds of three kinds: plain, a gradient, speckle
        kind = rng.choice(("plain", "gradient", "speckle"))
        shade = rng.randint(15, 55)
        if kind == "plain":
            return Image.new("RGB", (size, size), (shade, shade, shade + rng.randint(0, 15)))
        if kind == "gradient":
            ramp = np.linspace(shade, shade + rng.randint(20, 45), size)[None, :].repeat(size, 0)
            ramp = ramp if rng.random() < 0.5 else ramp.T
            return Image.fromarray(np.stack([ramp] * 3, -1).clip(0, 255).astype(np.uint8))
        grey = noise_rng.normal(shade, 12, (size, size))
        return Image.fromarray(grey.clip(0, 255).astype(np.uint8)).convert("RGB")
    sigma = rng.uniform(20, 40)  # the target's ground: a tinted noise, blurred
    grey = noise_rng.normal(75, sigma, (size, size))
    noise = Image.fromarray(grey.clip(0, 255).astype(np.uint8)).convert("RGB")
    tint = Image.new("RGB", (size, size), (rng.randint(40, 80), rng.randint(60, 100), rng.randint(90, 130)))
    return Image.blend(tint, noise, 0.5).filter(ImageFilter.GaussianBlur(0.6))


def _jitter(rng: random.Random, rgb) -> Tuple[int, int, int]:
    return tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in rgb)


def _fill(rng: random.Random, size: int, rgb, texture: str) -> Image.Image:
    """A square of the shape's fill: solid, or a pattern of its colour and a darker shade."""
    base = np.array(rgb, dtype=np.float32)
    dark = base * 0.55
    yy, xx = np.mgrid[0:size, 0:size]
    period = rng.randint(4, 7)
    if texture == "solid":
        mask = np.zeros((size, size), bool)
    elif texture == "stripes":
        angle = rng.uniform(0, math.pi)
        mask = ((xx * math.cos(angle) + yy * math.sin(angle)) // period) % 2 == 1
    elif texture == "dots":
        mask = ((xx % period) < 2) & ((yy % period) < 2)
    else:  # checks
        mask = ((xx // period + yy // period) % 2) == 1
    out = np.where(mask[..., None], dark, base)
    return Image.fromarray(out.astype(np.uint8))


def _deal(rng: random.Random, domain: str, images: int, min_per_pair: int) -> List[List[Tuple[str, str]]]:
    """The (concept, colour) of each instance of each image: a shuffled deck of every pair,
    ``min_per_pair`` times over (more when the images need more instances), dealt 1-3 to an image."""
    pairs = list(itertools.product(DOMAIN_CONCEPTS[domain], COLOURS[domain]))
    per_image = [rng.randint(1, MAX_PER_IMAGE) for _ in range(images)]
    rounds = max(min_per_pair, math.ceil(sum(per_image) / len(pairs)))
    deck = pairs * rounds
    rng.shuffle(deck)
    # every card dealt: top up images to MAX_PER_IMAGE, then add images, until the deck is empty
    while sum(per_image) < len(deck):
        short = [i for i, n in enumerate(per_image) if n < MAX_PER_IMAGE]
        if short:
            per_image[rng.choice(short)] += 1
        else:
            per_image.append(rng.randint(1, MAX_PER_IMAGE))
    while sum(per_image) > len(deck):  # fewer cards than places: take places away, never below one
        i = max(range(len(per_image)), key=lambda k: per_image[k])
        per_image[i] -= 1
    hands, k = [], 0
    for n in per_image:
        hands.append(deck[k : k + n])
        k += n
    return [h for h in hands if h]


def _image(rng: random.Random, size: int, domain: str, hand: Sequence[Tuple[str, str]]):
    """One image of the hand's shapes, none touching another (so every mask is the whole shape);
    returns it, its shapes, and the cards there was no room for (they go to another image)."""
    image = _background(rng, size, domain)
    shapes, placed, left = [], [], []
    for kind, colour in hand:
        reach = max(math.hypot(x, y) for x, y in _outline(kind))  # how far the shape reaches, at unit size
        for _attempt in range(60):
            r = rng.uniform(0.13, 0.21) * size
            margin = reach * r + 1
            cx, cy = rng.uniform(margin, size - margin), rng.uniform(margin, size - margin)
            if all(math.hypot(cx - x, cy - y) > reach * r + pr + 2 for x, y, pr in placed):
                break
        else:
            left.append((kind, colour))
            continue
        placed.append((cx, cy, reach * r))
        poly = _placed(kind, cx, cy, r, rng.uniform(0, 2 * math.pi))
        mask = Image.new("L", (size, size), 0)
        ImageDraw.Draw(mask).polygon(poly, fill=255)
        rgb = _jitter(rng, COLOURS[domain][colour])
        image.paste(_fill(rng, size, rgb, rng.choice(TEXTURES[domain])), (0, 0), mask)
        if domain == "target":
            ImageDraw.Draw(image).polygon(poly, outline=(235, 235, 235))
        shapes.append((kind, colour, poly))
    return image, shapes, left


def _annotation(ann_id: int, image_id: int, kind: str, colour: str, poly) -> Dict:
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    x0, y0 = min(xs), min(ys)
    area = 0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(poly))))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": CATEGORIES.index(kind) + 1,
        "bbox": [round(v, 2) for v in (x0, y0, max(xs) - x0, max(ys) - y0)],
        "area": round(area, 2),
        "segmentation": [[round(c, 2) for p in poly for c in p]],
        "iscrowd": 0,
        "attributes": {"colour": colour},
    }


def generate(root, domain: str = "base", seed: int = 0, size: int = 128, splits: Dict[str, int] = None,
             min_per_pair: int = 5) -> Path:  # fmt: skip
    """Write the domain's splits under ``root``: ``splits`` gives each split's image count (a split
    grows when its pairs need more instances than that many images hold)."""
    if domain not in DOMAIN_CONCEPTS:
        raise ValueError(f"unknown toy-world domain '{domain}'; choose one of {', '.join(DOMAIN_CONCEPTS)}")
    root = Path(root)
    splits = splits or {"train": 400, "valid": 64, "test": 64}
    every = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CATEGORIES)]
    own = [c for c in every if c["name"] in DOMAIN_CONCEPTS[domain]]
    for split_index, (split, count) in enumerate(splits.items()):
        rng = random.Random(f"toy-world-v{GENERATOR_VERSION}-{seed}-{domain}-{split}")
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        hands = _deal(rng, domain, count, min_per_pair) if count else []
        while hands:
            image, shapes, left = _image(rng, size, domain, hands.pop(0))
            if left:
                hands.append(left)
            image_id = len(images) + 1
            name = f"{domain}_{split}_{image_id:05d}.png"
            image.save(folder / name)
            images.append({"id": image_id, "file_name": name, "width": size, "height": size})
            for kind, colour, poly in shapes:
                annotations.append(_annotation(len(annotations) + 1, image_id, kind, colour, poly))
        coco = {
            "info": {"description": f"sam3_lora toy world v{GENERATOR_VERSION}, domain={domain}, seed={seed}"},
            "images": images,
            "annotations": annotations,
            "categories": own if split == "train" else every,
        }
        atomic_write_json(folder / ANNOTATIONS, coco, indent=None)
    return root


def pair_counts(coco: dict) -> Counter:
    """Instances per (concept, colour) pair of a generated split."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    return Counter((names[a["category_id"]], a["attributes"]["colour"]) for a in coco["annotations"])
