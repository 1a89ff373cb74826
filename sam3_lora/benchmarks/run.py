"""One benchmark run's settings (the ``benchmark`` section an experiment sets) and its readiness: the
dataset it trains on must be one the manifest lists as prepared.

``conf/dataset/benchmark.yaml`` reads the prepared folders through this section:
``dataset.root = <prepared>/<dataset>``, the training split ``<train_split>`` (``train``, or a few-shot
set ``train_shot<K>_seed<S>``), valid and test as prepared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from sam3_lora.benchmarks.catalog import BENCHMARKS
from sam3_lora.benchmarks.manifest import OK, ManifestError, read_manifest
from sam3_lora.core.schema import REQUIRED, Valid, at_least, one_of, setting


@dataclass
class BenchmarkRun:
    """The ``benchmark`` section: which prepared dataset a run trains on, on which training set."""

    name: str = setting(REQUIRED, "the benchmark (sam3_lora/benchmarks/catalog.py)", one_of(*BENCHMARKS))
    prepared: str = setting(REQUIRED, "the folder `python -m sam3_lora.benchmark prepare` wrote (out=)", names_run=False)
    dataset: str = setting(REQUIRED, "the dataset of the benchmark this run trains on (its name in the manifest)")
    shots: Optional[int] = setting(
        None, "K of the few-shot training set (null: the full training split)", at_least(1, optional=True)
    )
    train_split: str = setting(
        "train",
        "the prepared training set: train, or train_shot<K>_seed<S> (the few-shot experiments set it from shots "
        "and data_seed)",
        Valid(lambda v: isinstance(v, str) and v.startswith("train"), "train or train_shot<K>_seed<S>"),
        names_run=False,
    )


def readiness(section: BenchmarkRun) -> Tuple[str, bool, str]:
    """(what, ok, detail) for ``check`` and ``train``'s preflight: the manifest lists the dataset as
    prepared, with the training set this run asks for."""
    what = f"benchmark: {section.name}/{section.dataset}"
    try:
        manifest = read_manifest(Path(section.prepared))
    except ManifestError as e:
        return what, False, str(e)
    entry = next((d for d in manifest["datasets"] if d["name"] == section.dataset), None)
    if entry is None:
        listed = ", ".join(d["name"] for d in manifest["datasets"])
        return what, False, f"{section.prepared}/manifest.json has no dataset '{section.dataset}' (it has: {listed})"
    if entry["status"] != OK:
        return what, False, f"{section.dataset} is {entry['status']}: {entry['problem']}\n  fix: {entry['fix']}"
    if section.train_split != "train":
        shot = next((f for f in entry["few_shot"] if f["split"] == section.train_split), None)
        if shot is None or shot["status"] != OK:
            why = shot["problem"] if shot else "it was not prepared"
            return (
                what,
                False,
                f"{section.dataset}: no usable few-shot set {section.train_split} ({why}); prepare it: "
                f"python -m sam3_lora.benchmark prepare name={section.name} ... shots=[K] seeds=[S]",
            )
    return what, True, f"{section.prepared}/{section.dataset}/{section.train_split}"
