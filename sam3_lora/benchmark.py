"""``python -m sam3_lora.benchmark ACTION key=value ...``: the SAM3 paper's transfer benchmarks.

    prepare   name=rf100vl|odinw13 root=RELEASE [out=benchmarks/<name>] [few_shot_root=FSOD_RELEASE]
              [shots=[10]] [seeds=[3,30,300]] [datasets=[A,B]] [check_images=true]
              Find, validate and prepare each dataset once, its few-shot training sets beside it
              (published where the benchmark publishes them, else sampled), and write manifest.json.
    stand_in  name=rf100vl|odinw13 root=DIR [few_shot_root=DIR]
              Write a stand-in release (three toy-world datasets in the benchmark's own layout).
    table     sweep_dir=multirun/<date>/<time>
              The table of a benchmark experiment's multirun (its runs write it when they end).

Then: ``python -m sam3_lora.train -m experiment=odinw13_10shot`` (or rf100vl_10shot, rf100vl_full,
odinw13_full). The whole chain on a stand-in, on CPU: ``make benchmark-stand-in``. Layouts, recipes,
costs and what has been run: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import List, Optional

import yaml

from sam3_lora.benchmarks import catalog, stand_in
from sam3_lora.benchmarks.manifest import MANIFEST, PrepareRequest, prepare, summary
from sam3_lora.benchmarks.table import TABLE_FILES, write_table
from sam3_lora.core.errors import UserError
from sam3_lora.core.schema import REQUIRED, Valid, is_int, one_of, problems, setting


class BenchmarkCommandError(UserError, ValueError):
    """A command line this command cannot run."""


def _ints(optional: bool = False) -> Valid:
    return Valid(
        lambda v: (optional and v is None) or (isinstance(v, list) and all(is_int(x) and x >= 0 for x in v)),
        "a list of integers >= 0, e.g. [10]" + (" (or null)" if optional else ""),
    )


@dataclass
class PrepareSettings:
    name: str = setting(REQUIRED, "the benchmark", one_of(*catalog.BENCHMARKS))
    root: str = setting(REQUIRED, "the release as its publishers lay it out (docs/benchmarks.md)")
    out: Optional[str] = setting(None, "where the prepared datasets and manifest.json go (null: benchmarks/<name>)")
    few_shot_root: Optional[str] = setting(None, "RF100-VL's 10-shot release (download_rf100vl_fsod), if you have it")
    shots: List[int] = setting(doc="K of each few-shot training set ([]: none)", valid=_ints(), factory=lambda: [10])
    seeds: Optional[List[int]] = setting(
        None, "the few-shot seeds (null: the benchmark's published ones: RF100-VL 0, ODinW 3, 30, 300)", _ints(True)
    )
    datasets: Optional[List[str]] = setting(
        None,
        "prepare only these (null: all of the benchmark's)",
        Valid(lambda v: v is None or (isinstance(v, list) and all(isinstance(x, str) for x in v)), "a list of names"),
    )
    check_images: bool = setting(True, "decode every image once (existence, decoding, size)")


@dataclass
class StandInSettings:
    name: str = setting(REQUIRED, "the benchmark whose layout the stand-in copies", one_of(*catalog.BENCHMARKS))
    root: str = setting(REQUIRED, "where the stand-in release is written")
    few_shot_root: Optional[str] = setting(None, "RF100-VL: where its stand-in 10-shot release is written")


@dataclass
class TableSettings:
    sweep_dir: str = setting(REQUIRED, "a benchmark experiment's multirun directory")


ACTIONS = {"prepare": PrepareSettings, "stand_in": StandInSettings, "table": TableSettings}


def parse(argv: List[str]):
    """``ACTION key=value ...`` -> (action, its settings), every problem listed at once."""
    parser = argparse.ArgumentParser(
        prog="python -m sam3_lora.benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=list(ACTIONS))
    parser.add_argument("settings", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    action, pairs = args.action, args.settings
    values, found = {}, []
    for pair in pairs:
        key, eq, text = pair.partition("=")
        if not eq:
            found.append(f"'{pair}': give settings as key=value")
            continue
        try:
            values[key] = yaml.safe_load(text) if text else None
        except yaml.YAMLError:
            found.append(f"{key}: cannot read '{text}' (lists are [a,b])")
    schema = ACTIONS[action]
    given = values
    values = {f.name: _default(f) for f in fields(schema)}
    values.update(given)
    found += problems(schema, values, "")
    if found:
        raise BenchmarkCommandError(f"{action}: invalid settings (nothing was read or written):\n- " + "\n- ".join(found))
    return action, schema(**values)


def _default(f):
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default


def run(action: str, s) -> str:
    if action == "prepare":
        bench = catalog.benchmark(s.name)
        out = Path(s.out or f"benchmarks/{s.name}")
        req = PrepareRequest(
            bench,
            Path(s.root),
            out,
            shots=tuple(s.shots),
            seeds=None if s.seeds is None else tuple(s.seeds),
            few_shot_root=Path(s.few_shot_root) if s.few_shot_root else None,
            check_images=s.check_images,
            datasets=s.datasets,
        )
        manifest = prepare(req)
        return f"{summary(manifest)}\nwritten: {out / MANIFEST}"
    if action == "stand_in":
        written = stand_in.generate(s.name, s.root, s.few_shot_root)
        return f"stand-in {s.name} release at {s.root}: {', '.join(written)}"
    md = write_table(s.sweep_dir)
    return f"{md.read_text()}\nwritten: {', '.join(str(md.with_name(n)) for n in TABLE_FILES)}"


def main(argv=None) -> int:
    try:
        action, settings = parse(list(sys.argv[1:] if argv is None else argv))
        print(run(action, settings))
    except UserError as e:
        print(f"benchmark: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
