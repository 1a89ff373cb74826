"""Model cards: the ``README.md`` the Hugging Face Hub shows, for a training run and for every export.

YAML front matter (library_name, base_model, tags, license, pipeline_tag, datasets), then the base
model, the dataset (name, images, categories), the tuning method (its own lines), base vs tuned metrics on the
held-out split, the command that reproduces the run, how to load the files, and notes (what a
conversion left out, known differences). A run's facts come from the files training leaves in its
run directory (``results.json``, ``.hydra/``), so an export made later writes the same facts.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import yaml

from sam3_lora.core.atomic_files import atomic_write_text
from sam3_lora.core.documents import Either, Fields, Kind, ListOf, Nullable, read_config, read_yaml, require_shape
from sam3_lora.core.errors import UserError
from sam3_lora.runs import layout
from sam3_lora.runs.results import DatasetFacts, RunResults
from sam3_lora.tuning import LoraTuning, TuningMethod, method_of_record

STOCK_BASE = "facebook/sam3"  # the Hub id of the base sam3.pt (model=sam3)
# SAM3's weights are released under Meta's SAM License; a fine-tune inherits it.
LICENSE = {
    "license": "other",
    "license_name": "sam-license",
    "license_link": "https://github.com/facebookresearch/sam3/blob/main/LICENSE",
}
PIPELINE_TAG = "image-segmentation"
TAGS = ["sam3", "sam3_lora", "lora", "image-segmentation", "instance-segmentation", "promptable-concept-segmentation"]
# The figures of the metrics table, in this order: COCO AP (pycocotools), then the SA-Co metrics.
METRICS = (
    ("bbox/AP", "bbox AP"),
    ("bbox/AP50", "bbox AP50"),
    ("bbox/AP75", "bbox AP75"),
    ("segm/AP", "segm AP"),
    ("segm/AP50", "segm AP50"),
    ("segm/AP75", "segm AP75"),
    ("segm/cgF1", "segm cgF1"),
    ("segm/pmF1", "segm pmF1"),
    ("saco/IL_MCC", "IL_MCC"),
    ("saco/IL_FPR", "IL_FPR (lower is better)"),
)


# What a card reads of a run's .hydra/ files (the rest is the training's business).
_RUN_CONFIG_FACTS = Fields(
    {
        "model": Nullable(Fields({"name": Nullable(Kind(str)), "checkpoint_path": Nullable(Kind(str))})),
        "seed": Nullable(Either(Kind(int), Kind(str))),  # a string: an interpolation that does not resolve here
    }
)
_OVERRIDES = Nullable(ListOf(Kind(str)))  # Hydra's overrides.yaml: the command line's key=value list
RUN_RECORD_FIX = "Hydra writes the .hydra/ files when a training run starts: restore them from the run, or delete them"


class RunRecordError(UserError, ValueError):
    """A run directory's .hydra/ record that is unreadable or not as Hydra writes it."""


@dataclass
class RunFacts:
    """What a finished training run records about itself (read back from its run directory)."""

    run_dir: Optional[Path] = None
    model_name: Optional[str] = None
    model_option: Optional[str] = None
    checkpoint_path: Optional[str] = None
    seed: Optional[int] = None
    tuning: Optional[TuningMethod] = None  # the method results.json records (or the adapter file describes)
    trainable_parameters: Optional[int] = None
    dataset: Optional[DatasetFacts] = None
    metrics: Dict[str, Dict[str, float]] = field(default_factory=dict)
    heldout_split: Optional[str] = None
    command: Optional[str] = None
    retention: Optional[dict] = None  # results.json's retention: {dataset, split, base, tuned, change}
    preserve: Optional[dict] = None  # results.json's preserve: the distillation settings, when it distilled

    @classmethod
    def read(cls, run_dir) -> "RunFacts":
        from omegaconf import OmegaConf

        from sam3_lora.core.conf import model_option

        run_dir = Path(run_dir)
        facts = cls(run_dir=run_dir)
        config_path = layout.hydra_config(run_dir)
        if config_path.is_file():
            loaded = read_config(config_path, "run config", RUN_RECORD_FIX, RunRecordError)
            try:
                cfg = OmegaConf.to_container(loaded, resolve=True)
            except Exception:  # noqa: BLE001 - an environment-dependent interpolation: keep it as written
                cfg = OmegaConf.to_container(loaded, resolve=False)
            require_shape(cfg, _RUN_CONFIG_FACTS, config_path, "run config", RUN_RECORD_FIX, RunRecordError)
            model = cfg.get("model") or {}
            facts.model_name = model.get("name")
            facts.model_option = model_option(facts.model_name) if facts.model_name else None
            checkpoint = model.get("checkpoint_path")
            facts.checkpoint_path = checkpoint if isinstance(checkpoint, str) and "${" not in checkpoint else None
            facts.seed = cfg.get("seed")
        overrides = run_dir / layout.HYDRA_OVERRIDES
        if overrides.is_file():
            recorded = read_yaml(overrides, "overrides record", RUN_RECORD_FIX, _OVERRIDES, RunRecordError)
            facts.command = train_command(recorded or [])
        if (run_dir / layout.RESULTS).is_file():
            r = RunResults.read(run_dir)
            facts.trainable_parameters = r.trainable_parameters
            facts.heldout_split = r.heldout_split
            facts.dataset = r.dataset
            facts.tuning = method_of_record(r.tuning or {"label": r.tuned_label})
            facts.metrics = {k: v for k, v in (("base", r.base), ("tuned", r.tuned)) if v}
            facts.retention = r.retention
            facts.preserve = r.preserve
        return facts


def train_command(overrides) -> str:
    """The command line that reproduces a run from its Hydra overrides."""
    return " ".join(["python -m sam3_lora.train", *(shlex.quote(str(o)) for o in overrides)])


def base_description(facts: RunFacts) -> str:
    if facts.model_name == "sam3":
        where = f" (`{facts.checkpoint_path}`)" if facts.checkpoint_path else ""
        return f"SAM3, the stock 840M image model: [{STOCK_BASE}](https://huggingface.co/{STOCK_BASE}){where}"
    option = f"`model={facts.model_option}`" if facts.model_option else f"model '{facts.model_name}'"
    seed = f", seed {facts.seed}" if facts.seed is not None else ""
    return f"{option}: SAM3's own classes at a small size, built by sam3_lora{seed} (not a Hub model)"


def hub_base_model(facts: RunFacts) -> Optional[str]:
    return STOCK_BASE if facts.model_name == "sam3" else None


@dataclass
class ModelCard:
    title: str
    library_name: str
    facts: RunFacts
    summary: str
    usage: str
    files: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    extra_tags: List[str] = field(default_factory=list)
    base_only: bool = False  # the frozen base itself: no LoRA, no tuned scores

    def front_matter(self) -> dict:
        meta = {"library_name": self.library_name}
        base = hub_base_model(self.facts)
        if base:
            meta["base_model"] = base
        meta["tags"] = [*TAGS, *self.extra_tags]
        meta.update(LICENSE)
        meta["pipeline_tag"] = PIPELINE_TAG
        if self.facts.dataset:
            meta["datasets"] = [self.facts.dataset.label]
        return meta

    def render(self) -> str:
        f = self.facts
        lines = ["---", yaml.safe_dump(self.front_matter(), sort_keys=False).strip(), "---", "", f"# {self.title}", ""]
        lines += [self.summary, "", "## Base model", "", base_description(f), ""]
        lines += ["## Dataset", "", *_dataset_lines(f.dataset), ""]
        if self.base_only:
            tuning = ["None: this is the frozen base model the run adapted."]
        else:
            tuning = f.tuning.card_lines(f.trainable_parameters) if f.tuning is not None else ["Not recorded."]
        heading = f.tuning.name if f.tuning is not None and not self.base_only else "tuning"
        lines += [f"## {heading[0].upper()}{heading[1:]}", "", *tuning, ""]
        if f.preserve and not self.base_only:
            lines += ["### Distillation from the base", "", _preserve_line(f.preserve), ""]
        lines += ["## Results", "", *_metric_lines(f.metrics, f.heldout_split), ""]
        if f.retention and not self.base_only:
            lines += ["### What tuning kept", "", *_retention_lines(f.retention), ""]
        lines += ["## Reproduce", ""]
        lines += (
            ["```bash", f.command, "```"]
            if f.command
            else ["The training command was not recorded (no `.hydra/overrides.yaml` in the run directory)."]
        )
        lines += ["", "## Use", "", self.usage.strip(), ""]
        if self.files:
            lines += ["## Files", "", *(f"- {line}" for line in self.files), ""]
        if self.notes:
            lines += ["## Notes", "", *(f"- {line}" for line in self.notes), ""]
        return "\n".join(lines)

    def write(self, path) -> Path:
        path = Path(path)
        atomic_write_text(path, self.render())
        return path


def _dataset_lines(d: Optional[DatasetFacts]) -> List[str]:
    if d is None:
        return ["Not recorded (exported from an adapter file without its training run)."]
    lines = [
        f"`{d.label}` (`dataset={d.name}`, at `{d.root}`)",
        "",
        "| split | images | annotations |",
        "|---|---|---|",
    ]
    lines += [f"| {s} | {n['images']} | {n['annotations']} |" for s, n in d.splits.items()]
    lines += ["", f"Categories ({len(d.categories)}): {', '.join(d.categories)}"]
    return lines


def _preserve_line(p: Mapping) -> str:
    if "vocabulary" not in p:  # a keeping method of another kind: its settings as recorded
        return "Each step also added a term keeping what the base knew: " + ", ".join(f"{k}={v}" for k, v in p.items())
    vocabulary = p["vocabulary"] if isinstance(p["vocabulary"], str) else ", ".join(p["vocabulary"])
    return (
        f"Each step also matched the frozen base's answers (the model with its adapters off, or a frozen copy) on "
        f"{p['anchor_batch']} unlabelled anchor images from `{p['images']}`, asked about: {vocabulary}; "
        f"weight {p['weight']:g} (sam3_lora/training/distill.py)."
    )


def _metric_lines(metrics: Mapping[str, Mapping[str, float]], split: Optional[str]) -> List[str]:
    if not metrics:
        return ["Not recorded (no `results.json`: the run did not finish, or this export has no run directory)."]
    lines = [
        f"On the held-out `{split}` split: COCO AP (pycocotools) and the SAM3 paper's SA-Co metrics (0..1; "
        "cgF1 = pmF1 x IL_MCC at the score threshold chosen on valid; every concept prompted of every image).",
        "",
    ]
    return lines + _comparison(metrics.get("base", {}), metrics.get("tuned", {}), ("base", "tuned"))


def _retention_lines(retention: Mapping) -> List[str]:
    return [
        f"The frozen base and the tuned model on `{retention['dataset']}` ({retention['split']} split), a dataset "
        "the run did not train on (its source domain, or concepts it did not tune): negative changes are forgotten.",
        "",
        *_comparison(retention.get("base") or {}, retention.get("tuned") or {}, ("base", "tuned")),
    ]


def _comparison(base: Mapping[str, float], tuned: Mapping[str, float], names) -> List[str]:
    def cell(m, key):
        return f"{m[key]:.3f}" if key in m and m[key] != -1 else "—"

    lines = [f"| metric | {names[0]} | {names[1]} | change |", "|---|---|---|---|"]
    for key, label in METRICS:
        defined = key in base and key in tuned and base[key] != -1 and tuned[key] != -1
        change = f"{tuned[key] - base[key]:+.3f}" if defined else "—"
        lines.append(f"| {label} | {cell(base, key)} | {cell(tuned, key)} | {change} |")
    return lines


def left_out_notes(left_out: Mapping[str, str]) -> List[str]:
    """Card lines naming what a conversion left out (see sam3_lora.models.transformers_keymap.summarise)."""
    from sam3_lora.models.transformers_keymap import summarise

    return [f"Left out of this export (no counterpart in its format) — {line}" for line in summarise(left_out)]


def run_card(run_dir) -> ModelCard:
    """The card a training run writes into its run directory."""
    facts = RunFacts.read(run_dir)
    tuning = facts.tuning or LoraTuning()  # a run without results.json yet: the default method
    return ModelCard(
        title=f"SAM3 {tuning.card_title} ({Path(run_dir).name})",
        library_name="sam3_lora",
        facts=facts,
        summary=f"A sam3_lora training run: SAM3 adapted to `{facts.dataset.label if facts.dataset else 'a dataset'}` "
        f"with {tuning.name}.",
        usage=RUN_USAGE,
        files=[
            tuning.files_line(),
            f"`{layout.RESULTS}`: held-out scores; `{layout.METRICS}`: validation scores; `{layout.TRAINING_LOG}`",
            "`.hydra/`: the composed settings and overrides",
        ],
    )


RUN_USAGE = """\
```bash
python -m sam3_lora.evaluate run_dir=. split=test                        # COCO AP, per category
python -m sam3_lora.predict run_dir=. images=photos/ prompts='[a, b]'    # overlays + COCO JSON
python -m sam3_lora.export run_dir=. format=transformers output=hf/      # Sam3Model.from_pretrained
python -m sam3_lora.export run_dir=. format=transformers-peft output=peft/  # PeftModel on Sam3Model
python -m sam3_lora.export run_dir=. format=merged output=sam3_tuned.pt  # stock sam3's loader
```"""


# How each export format is loaded: (library_name, extra tags, usage template). Templates use
# {output}: the exported file or folder's name, {base}: where the base model comes from.
EXPORT_FORMATS = {
    "merged": (
        "sam3",
        [],
        """\
Full weights in `sam3.pt`'s layout, every LoRA update merged; stock `sam3` loads them (no sam3_lora needed).
The pip `sam3` wheel ships no BPE vocabulary: pass the byte-identical one from `pip install open-clip-torch`:

```python
from pathlib import Path

import open_clip
from sam3.model_builder import build_sam3_image_model

bpe_path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"  # the file the sam3 wheel leaves out
model = build_sam3_image_model(checkpoint_path="{output}", bpe_path=str(bpe_path), load_from_HF=False)
```""",
    ),
    "peft": (
        "peft",
        ["peft"],
        """\
A Hugging Face PEFT adapter on sam3's own modules (`sam3.model.sam3_image.Sam3Image`):

```python
from peft import PeftModel
base = ...  # the SAM3 image model it was trained on ({base})
model = PeftModel.from_pretrained(base, "{output}")
```""",
    ),
    "transformers": (
        "transformers",
        ["transformers"],
        """\
A transformers `Sam3Model` (every LoRA update merged):

```python
from transformers import Sam3Model
model = Sam3Model.from_pretrained("{output}")
```
Preprocess with SAM3's processor (`Sam3Processor.from_pretrained("facebook/sam3")`, resized to the
config's `image_size`) or give `pixel_values` and CLIP token ids yourself.""",
    ),
    "transformers-peft": (
        "peft",
        ["peft", "transformers"],
        """\
A PEFT LoRA adapter on transformers' `Sam3Model` (q/k/v/o projections, FFNs{modules_to_save}):

```python
from peft import PeftModel
from transformers import Sam3Model
base = Sam3Model.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "{output}")
model = model.merge_and_unload()  # optional: plain Sam3Model weights, full speed
```""",
    ),
}

# What a transformers-format user should know: measured by tests/test_hf_interop.py.
TRANSFORMERS_NOTES = [
    "Checked against sam3 0.1.4 on a small SAM3 of the same classes (fp32, CPU): with the same image, token "
    "ids and prompts, `pred_logits`, `pred_boxes` (xyxy), `pred_masks`, `presence_logits` and `semantic_seg` "
    "agree within 1e-5 of each output's largest magnitude (fp32 rounding).",
    "Text-only prompts: sam3 always runs its geometry encoder, so a text prompt carries one more token (the "
    "geometry encoder's CLS token); transformers' Sam3Model skips the geometry encoder when no box is given. "
    "To get sam3's (and this model's training-time) behaviour, pass one padding box: "
    "`input_boxes=torch.tensor([[[0.5, 0.5, 1.0, 1.0]]]), input_boxes_labels=torch.tensor([[-10]])`.",
    "Presence logits: transformers clamps them to [-10, 10]; sam3 0.1.4 computes the same clamp but discards "
    "it (decoder.py), so its presence logits beyond ±10 are unclamped (scores differ by < 5e-5 there).",
    "transformers' default ViT `layer_norm_eps` is 1e-6; sam3's ViT uses 1e-5, which this config.json sets. "
    "A Sam3Model config with the default 1e-6 changes outputs by ~1e-5 relative.",
]


def export_card(
    fmt: str,
    facts: RunFacts,
    output_name: str,
    left_out: Optional[Mapping[str, str]] = None,
    base_only: bool = False,
    pushed_to: Optional[str] = None,
    adapter_scale: Optional[float] = None,
) -> ModelCard:
    """The card an export writes beside (or into) its output."""
    library_name, tags, usage = EXPORT_FORMATS[fmt]
    if base_only:
        base_scores = {k: v for k, v in facts.metrics.items() if k == "base"}
        facts = replace(facts, tuning=None, metrics=base_scores, trainable_parameters=None)
    saved = facts.tuning.export_note(fmt) if facts.tuning is not None else ""
    if fmt == "peft":  # PEFT on sam3's own modules: the sam3 model training used
        base = base_description(facts)
    else:
        base = hub_base_model(facts) or "<the base exported with format=transformers base=true>"
    what = "frozen base model" if base_only else (facts.tuning or LoraTuning()).export_title(fmt)
    notes = list(TRANSFORMERS_NOTES) if fmt.startswith("transformers") else []
    notes += left_out_notes(left_out or {})
    if pushed_to:
        notes.append(f"Uploaded to {pushed_to} by `python -m sam3_lora.export push_to_hub=...`.")
    if adapter_scale is not None and adapter_scale != 1:
        notes.append(
            f"Merged at adapter scale {adapter_scale:g} (`adapter_scale=`: 0 is the base model, 1 the adapter as "
            "trained): the run's scores below are at scale 1."
        )
    return ModelCard(
        title=f"SAM3 {what} ({fmt})",
        library_name=library_name,
        facts=facts,
        summary=f"Exported by `python -m sam3_lora.export format={fmt}`"
        + (f" from the training run `{facts.run_dir}`." if facts.run_dir else "."),
        usage=usage.format(output=output_name, base=base, modules_to_save=saved),
        notes=notes,
        extra_tags=tags,
        base_only=base_only,
    )
