"""``python -m sam3_lora.predict``: text-prompted instance segmentation on your images.

For an image, a folder or a glob, and one or more text prompts, writes an overlay PNG per
image (masks, boxes, prompt and score) and ``predictions.coco.json``: a COCO dataset whose
categories are the prompts and whose annotations carry RLE masks, boxes and scores
(``pycocotools.coco.COCO`` loads it). Every input is checked before anything is written.
Entries of the folder or glob that cannot be used (not an image, or an image that does not
decode) are skipped, each listed with its reason in the summary and in the JSON's
``info.skipped``; the command fails only when no image is usable, or at the first undecodable
image with ``stop_on_error=true``.
"""

from __future__ import annotations

import colorsys
import glob
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image, ImageDraw, UnidentifiedImageError
from pycocotools import mask as mask_util

from sam3_lora.core.atomic_files import atomic_write, atomic_write_json
from sam3_lora.core.conf import CONF_DIR
from sam3_lora.core.device import resolve_device
from sam3_lora.core.errors import UserError, exit_on_user_error
from sam3_lora.core.outputs import check_output
from sam3_lora.data.image_decode import ImageModeError, open_rgb
from sam3_lora.data.image_files import IMAGE_SUFFIXES, is_image_file
from sam3_lora.data.sam3_dataset import build_transforms, collate
from sam3_lora.evaluation.detections import predict
from sam3_lora.pipeline.settings import check_use_settings, run_command
from sam3_lora.pipeline.tuned import load_tuned, output_dir
from sam3_lora.sam3_compat.prompt_tokens import same_prompt_groups

log = logging.getLogger("sam3_lora.predict")


class PredictError(UserError, ValueError):
    """Inputs to predict that cannot be used (no images, undecodable images, no prompts)."""


@dataclass
class Skipped:
    """An entry of ``images=`` that was not used, and why."""

    path: Path
    reason: str

    def name(self) -> str:
        return f"{self.path.name}/" if self.path.is_dir() else self.path.name


def collect_images(spec: str) -> Tuple[List[Path], List[Skipped]]:
    """The image files an ``images=`` value names, and what it names that is not one (skipped)."""
    path = Path(spec)
    if path.is_file():
        return [path], []
    entries = sorted(path.iterdir()) if path.is_dir() else sorted(Path(p) for p in glob.glob(spec, recursive=True))
    found, skipped = [], []
    for p in entries:
        if is_image_file(p):
            found.append(p)
        else:
            skipped.append(Skipped(p, "a folder" if p.is_dir() else "not an image file"))
    if not found:
        raise PredictError(
            f"images={spec}: no image files there (an image, a folder or a glob; {sorted(IMAGE_SUFFIXES)})"
            + (f"; found only {_listing(skipped)}" if skipped else "")
        )
    return found, skipped


def _listing(skipped: Sequence[Skipped], first: int = 5) -> str:
    """``a.txt, b.json, sub/ (+3 more)``: names of skipped entries, folders marked."""
    names = [s.name() for s in skipped[:first]]
    return ", ".join(names) + (f" (+{len(skipped) - first} more)" if len(skipped) > first else "")


def load_images(paths: Sequence[Path], stop_on_error: bool) -> Tuple[List[Path], List[Image.Image], List[Skipped]]:
    """The images that decode; those that do not are skipped with the decoder's reason (or, with
    ``stop_on_error``, stop the command before anything is written)."""
    used, images, bad = [], [], []
    for p in paths:
        try:
            images.append(open_rgb(p))
            used.append(p)
        except ImageModeError as e:
            bad.append(Skipped(p, str(e).split(": ", 1)[-1]))
            if stop_on_error:
                raise PredictError(f"{e}; nothing was written (stop_on_error=true)") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            bad.append(Skipped(p, f"cannot be decoded: {e}"))
            if stop_on_error:
                raise PredictError(f"{p} cannot be decoded ({e}); nothing was written (stop_on_error=true)") from None
    if not images:
        raise PredictError(
            "no image could be used, nothing was written:\n  " + "\n  ".join(f"{s.path}: {s.reason}" for s in bad)
        )
    return used, images, bad


def _datapoint(image: Image.Image, prompts: Sequence[str], image_id: int):
    from sam3.train.data.sam3_image_dataset import Datapoint, FindQueryLoaded, InferenceMetadata
    from sam3.train.data.sam3_image_dataset import Image as Sam3Image

    h, w = image.height, image.width
    queries = [
        FindQueryLoaded(
            query_text=prompt,
            image_id=0,
            object_ids_output=[],
            is_exhaustive=True,
            inference_metadata=InferenceMetadata(
                coco_image_id=image_id,
                original_image_id=image_id,
                original_category_id=k + 1,
                original_size=(h, w),
                object_id=-1,
                frame_index=-1,
            ),
        )
        for k, prompt in enumerate(prompts)
    ]
    return Datapoint(find_queries=queries, images=[Sam3Image(data=image, objects=[], size=(h, w))])


def batches(images: Sequence[Image.Image], prompts: Sequence[str], resolution: int, batch_size: int):
    """sam3 batches asking every prompt of every image, preprocessed as for evaluation."""
    transforms = build_transforms(resolution, training=False)
    points = []
    for i, image in enumerate(images):
        dp = _datapoint(image, prompts, i)
        for t in transforms:
            dp = t(dp)
        points.append(dp)
        if len(points) == batch_size:
            yield collate(points, with_masks=False)
            points = []
    if points:
        yield collate(points, with_masks=False)


def _colour(k: int) -> tuple:
    r, g, b = colorsys.hsv_to_rgb((k * 0.618) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def overlay(image: Image.Image, detections: List[dict], prompts: Sequence[str]) -> Image.Image:
    """Masks blended in each prompt's colour, boxes, and 'prompt score' labels."""
    canvas = np.asarray(image, dtype=np.float32).copy()
    for d in detections:
        m = mask_util.decode(d["segmentation"]).astype(bool)
        canvas[m] = 0.5 * canvas[m] + 0.5 * np.array(_colour(d["category_id"] - 1), dtype=np.float32)
    out = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for d in detections:
        x, y, w, h = d["bbox"]
        colour = _colour(d["category_id"] - 1)
        draw.rectangle([x, y, x + w, y + h], outline=colour, width=2)
        label = f"{prompts[d['category_id'] - 1]} {d['score']:.2f}"
        tw = draw.textlength(label)
        draw.rectangle([x, max(y - 12, 0), x + tw + 4, max(y - 12, 0) + 12], fill=colour)
        draw.text((x + 2, max(y - 12, 0)), label, fill=(0, 0, 0))
    return out


def coco_result(
    paths: Sequence[Path], images: Sequence[Image.Image], detections: List[dict], prompts: Sequence[str]
) -> Dict:
    annotations = []
    for i, d in enumerate(detections, start=1):
        rle = dict(d["segmentation"])
        annotations.append(
            {
                "id": i,
                "image_id": d["image_id"] + 1,
                "category_id": d["category_id"],
                "score": d["score"],
                "bbox": [round(v, 2) for v in d["bbox"]],
                "area": float(mask_util.area(rle)),
                "segmentation": rle,
                "iscrowd": 0,
            }
        )
    return {
        "info": {"description": "sam3_lora predictions"},
        "images": [
            {"id": i + 1, "file_name": str(p), "width": im.width, "height": im.height}
            for i, (p, im) in enumerate(zip(paths, images))
        ],
        "categories": [{"id": k + 1, "name": p} for k, p in enumerate(prompts)],
        "annotations": annotations,
    }


def given_prompts(cfg: DictConfig) -> List[str]:
    """``prompts=`` as text prompts (checked by the settings schema); [] when not given (the run's
    categories are then used)."""
    if cfg.prompts is None:
        return []
    prompts = [p.strip() for p in ([cfg.prompts] if isinstance(cfg.prompts, str) else cfg.prompts)]
    repeated = same_prompt_groups(prompts) + [[p, p] for p in dict.fromkeys(prompts) if prompts.count(p) > 1]
    if repeated:
        raise PredictError(
            f"prompts={prompts!r}: {' and '.join(map(repr, repeated[0]))} are one prompt to the model (sam3's tokenizer "
            "lowercases, collapses whitespace and keeps the first 30 tokens); give each prompt once"
        )
    return prompts


def _prompts(given: List[str], tuned) -> List[str]:
    if given:
        return given
    if tuned.dataset is not None and tuned.dataset.train.exists():
        return tuned.dataset.train.category_names("Restore the run's training data, or pass prompts=[...]", PredictError)
    raise PredictError("no prompts: pass prompts=[...] (e.g. prompts=[person,'hard hat'])")


def run(cfg: DictConfig) -> Path:
    check_use_settings(cfg)
    check_output(cfg.output, "output", folder=True, overwrite=cfg.overwrite)
    given = given_prompts(cfg)
    paths, skipped = collect_images(cfg.images)
    paths, images, undecodable = load_images(paths, bool(cfg.get("stop_on_error")))
    skipped += undecodable
    routing = bool(cfg.get("concept_routing"))
    tuned = load_tuned(OmegaConf.merge(cfg, {"merge": False}) if routing else cfg)  # routing switches adapters
    prompts = _prompts(given, tuned)
    base_prompts = [p for p in prompts if p not in tuned.tuned_concepts()] if routing and tuned.adapter else []
    device = resolve_device(cfg.device)
    detections = predict(
        tuned.model.to(device),
        batches(images, prompts, tuned.model.image_size, cfg.batch_size),
        device,
        cfg.max_dets,
        score_threshold=cfg.score_threshold,
        base_for={prompts.index(p) + 1 for p in base_prompts},
    )
    # Everything checked and computed: only now touch the output folder.
    out = output_dir(cfg.output, cfg.overwrite)
    by_image: Dict[int, List[dict]] = {}
    for d in detections:
        by_image.setdefault(d["image_id"], []).append(d)
    for i, (path, image) in enumerate(zip(paths, images)):
        picture = overlay(image, by_image.get(i, []), prompts)
        atomic_write(out / f"{i:04d}_{path.stem}_overlay.png", lambda tmp: picture.save(tmp, format="PNG"), 1 << 20)
    result = coco_result(paths, images, detections, prompts)
    result["info"]["skipped"] = [{"path": str(s.path), "reason": s.reason} for s in skipped]
    result["info"]["adapter_scale"] = tuned.adapter_scale
    result["info"]["answered_by_the_base"] = base_prompts  # concept routing: prompts the adapter was not trained on
    atomic_write_json(out / "predictions.coco.json", result, indent=None)
    log.info(
        "%s: %d detections on %d image(s) for prompts %s (score >= %.2f) -> %s%s",
        tuned.describe(),
        len(detections),
        len(images),
        prompts,
        cfg.score_threshold,
        out,
        _skipped_summary(skipped, cfg.images),
    )
    return out


def _skipped_summary(skipped: Sequence[Skipped], spec: str, first: int = 10) -> str:
    if not skipped:
        return ""
    lines = [f"  {s.name()}: {s.reason}" for s in skipped[:first]]
    if len(skipped) > first:
        lines.append(f"  (+{len(skipped) - first} more)")
    return (
        f"\nskipped {len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} of images={spec} (also in info.skipped):\n"
        + "\n".join(lines)
    )


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="predict")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    run_command(main)
