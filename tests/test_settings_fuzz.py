"""Every command's settings, fuzzed from their schemas: each setting given a value of the wrong type, one
outside its range, an empty one and an absurdly large one is refused by the settings check with the
key named, before anything is loaded or written.

The cases are generated from the dataclasses the configs are typed by (``OmegaConf.get_type`` of each
section, nested sections included), so a new command or setting is covered without new test code. A
value the config system refuses by type while composing counts as refused there (that is how Hydra
answers it on the command line); every other value must be refused by the command's own check. One
real subprocess per command shows the exit code and that no traceback reaches the user.
"""

import dataclasses
import math
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sam3_lora.core.schema import HYDRA_KEYS, LONGEST_LIST, REQUIRED, SettingsError, parse_command_line
from sam3_lora.pipeline.settings import CHECKED, ConfigError, check_settings, check_use_settings, compose
from sam3_lora.pipeline.use_settings import DescribeSettings, ReportSettings

ROOT = Path(__file__).resolve().parent.parent

# Each Hydra command with the fewest settings it composes with (paths need not exist: nothing is read).
COMMANDS = {
    "train": ["model=sam3_tiny"],
    "evaluate": ["run_dir=some/run"],
    "predict": ["run_dir=some/run", "images=some/images", "output=some/out"],
    "export": ["run_dir=some/run", "output=some/merged.pt"],
    "tradeoff": ["run_dir=some/run"],
}
PLAIN_COMMANDS = {"describe": DescribeSettings, "report": ReportSettings}

HUGE_TEXT = "x" * 100_000


def _plain_type(kind):
    """(the type inside Optional[...], whether None is allowed)."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) is typing.Union and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return inner[0], True
    return kind, False


def _item_of(kind, default):
    if default:
        return default[0]
    (item,) = typing.get_args(kind) or (str,)
    return {str: "a", float: 0.5, int: 1}.get(item, "a")


def field_cases(f: dataclasses.Field, kind, default):
    """(case name, hostile value) for one setting, by its declared type and range."""
    base, optional = _plain_type(kind)
    valid = f.metadata.get("valid")
    cases = []
    if base is bool:
        cases += [("wrong type", "maybe")]
    elif base in (int, float):
        cases += [("wrong type", "many"), ("absurdly large", 10**18 if base is int else 1e300)]
        if base is float:
            cases += [("not finite", math.nan)]
        range_pool = [-1, 0, -(10**6)] if base is int else [-1.0, 0.0, 2.0, -1e6]
        bad = [v for v in range_pool if valid is not None and not valid(v)]
        cases += [("out of range", bad[0])] if bad else []
    elif base is str:
        cases += [("wrong type", [1, 2]), ("empty", ""), ("absurdly large", HUGE_TEXT)]
        if valid is not None and not valid("no-such-choice"):
            cases += [("out of range", "no-such-choice")]
    elif typing.get_origin(base) in (list, typing.List):
        item = _item_of(base, default)
        cases += [("wrong type", "not-a-list"), ("empty", []), ("absurdly large", [item] * (LONGEST_LIST + 1))]
    elif base is typing.Any and valid is not None:  # e.g. prompts: text or a list of texts
        cases += [("wrong type", 5), ("empty", []), ("absurdly large", HUGE_TEXT)]
    if not optional and base is not typing.Any:
        cases += [("empty", None)]
    if default is None:  # [] where the default is null says the same: no items
        cases = [(name, v) for name, v in cases if v != []]
    # A value equal to the default is no hostile value (an empty list of extra scales, say).
    return [(name, v) for name, v in cases if not _same(v, default)]


def _same(a, b) -> bool:
    try:
        return type(a) is type(b) and a == b
    except Exception:  # noqa: BLE001
        return False


def schema_fields(schema, node, prefix):
    """(dotted key, field, type, current value) of every setting of ``schema`` present in ``node``,
    nested dataclass sections included."""
    types = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if f.name in HYDRA_KEYS or f.name not in node:
            continue
        key, value = f"{prefix}{f.name}", node[f.name]
        base, _ = _plain_type(types[f.name])
        if dataclasses.is_dataclass(base):
            if isinstance(value, dict):
                yield from schema_fields(base, value, f"{key}.")
            continue
        if base is typing.Any and f.metadata.get("valid") is None:
            continue  # a config-group slot, checked as its own section
        yield key, f, types[f.name], value


def command_cases(name):
    cfg = compose(name, COMMANDS[name])
    values = OmegaConf.to_container(cfg, resolve=True)
    sections = [("", OmegaConf.get_type(cfg), values)]
    for key in CHECKED if name == "train" else ("model", "dataset", "retention"):
        node = cfg.get(key)
        schema = OmegaConf.get_type(node) if node else None
        if schema is not None and dataclasses.is_dataclass(schema):
            sections.append((f"{key}.", schema, values[key]))
    for prefix, schema, node in sections:
        for key, f, kind, current in schema_fields(schema, node, prefix):
            for case, value in field_cases(f, kind, current if current != REQUIRED else None):
                yield pytest.param(name, key, value, id=f"{name}:{key}:{case}")


CASES = [case for name in COMMANDS for case in command_cases(name)]
PLAIN_CASES = [
    pytest.param(name, f.name, value, id=f"{name}:{f.name}:{case}")
    for name, schema in PLAIN_COMMANDS.items()
    for f in dataclasses.fields(schema)
    for case, value in (("empty", ""), ("absurdly large", HUGE_TEXT), ("holds NUL", "a\x00b"))
]


@pytest.fixture(scope="module")
def composed():
    return {name: compose(name, overrides) for name, overrides in COMMANDS.items()}


def _refusal(name, cfg):
    """The check's message, or None when it accepts ``cfg``."""
    try:
        (check_settings if name == "train" else check_use_settings)(cfg)
    except ConfigError as e:
        return str(e)
    return None


@pytest.mark.parametrize("name,key,value", CASES)
def test_every_setting_refuses_hostile_values_by_name(composed, name, key, value):
    cfg = composed[name].copy()
    try:
        OmegaConf.update(cfg, key, value, merge=False)
    except OmegaConfBaseException as e:  # refused by type while composing (Hydra: "Error merging override")
        assert key in str(e) or getattr(e, "full_key", None) == key, str(e)
        return
    message = _refusal(name, cfg)
    assert message is not None, f"{name} accepted {key}={str(value)[:80]}"
    assert f"{key}=" in message or f"{key}:" in message, message
    assert "Traceback" not in message and len(message) < 4000, message[:500]


@pytest.mark.parametrize("name,key,value", PLAIN_CASES)
def test_plain_commands_refuse_hostile_paths_by_name(name, key, value):
    with pytest.raises(SettingsError, match=rf"^invalid settings[^\n]*\n- {key}="):
        parse_command_line(PLAIN_COMMANDS[name], [value], "")


@pytest.mark.parametrize("name", COMMANDS)
def test_a_key_no_schema_declares_is_refused(composed, name):
    cfg = composed[name].copy()
    OmegaConf.set_struct(cfg, False)
    cfg.no_such_setting = 1
    assert "no_such_setting: unknown key" in (_refusal(name, cfg) or "")


# One bad value per command, given on a real command line: exit code 2, the key named, no traceback,
# nothing written in the folder it runs in.
SUBPROCESS_CASES = {
    "train": ["model=sam3_tiny", "trainer.batch_size=0", "hydra.run.dir=run"],
    "evaluate": ["run_dir=some/run", "batch_size=0"],
    "predict": ["run_dir=some/run", "images=x.png", "output=out", "score_threshold=7"],
    "export": ["run_dir=some/run", "output=m.pt", "format=onnx"],
    "tradeoff": ["run_dir=some/run", f"scales=[{'0.5,' * 5}-1]"],
    "describe": [HUGE_TEXT[:5000]],
    "report": [""],
}


def test_each_command_exits_2_naming_the_key_without_a_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = {}
    for name, args in SUBPROCESS_CASES.items():
        cwd = tmp_path / name
        cwd.mkdir()
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", f"sam3_lora.{name}", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 2, f"{name}: exit {proc.returncode}\n{out[-2000:]}"
        assert "Traceback" not in out, f"{name}:\n{out[-3000:]}"
        assert "invalid settings" in out, f"{name}:\n{out[-2000:]}"
        written = [p.name for p in (tmp_path / name).iterdir()]
        if name == "train":  # Hydra records the launch (and its log) in the run directory before the task runs
            assert {p.name for p in (tmp_path / name / "run").iterdir()} <= {".hydra", "training.log"}, written
        else:
            assert written == [], f"{name} wrote {written}"
