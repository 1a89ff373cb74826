"""The package's shape: commands at the top, the library in layers below them (import-linter's contracts),
short flat orchestration, one reader of the ``lora`` group, and no module named like one of Python's own."""

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "sam3_lora"
COMMANDS = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def _imported_modules(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def test_every_top_level_module_is_a_command():
    assert COMMANDS == ["benchmark", "check", "describe", "evaluate", "export", "predict", "report", "tradeoff", "train"]
    for name in COMMANDS:
        assert '__name__ == "__main__"' in (PACKAGE / f"{name}.py").read_text(), f"sam3_lora/{name}.py is no command"


def test_no_library_module_imports_a_command():
    commands = {f"sam3_lora.{name}" for name in COMMANDS}
    for path in PACKAGE.glob("*/**/*.py"):
        used = commands & set(_imported_modules(path))
        assert not used, f"{path.relative_to(PACKAGE.parent)} imports the command(s) {sorted(used)}"


def test_no_module_shadows_the_standard_library():
    shadowing = [p for p in PACKAGE.rglob("*.py") if p.stem in sys.stdlib_module_names]
    assert not shadowing, f"named like standard-library modules: {shadowing}"


def test_the_import_layers_and_acyclicity_hold():
    """import-linter's contracts in setup.cfg: each layer imports only below it, and no package or
    module imports another in a circle."""
    lint = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(lint), "setup.cfg"], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "2 kept, 0 broken" in res.stdout, res.stdout[-3000:] + res.stderr[-2000:]


# Reading the ``lora`` group: the tuning methods decide what LoRA or full fine-tuning means; the settings
# check builds it (as it builds every group's object) and nothing else reads it.
READS_LORA = re.compile(r"\bcfg\.lora\b|\[\s*['\"]lora['\"]\s*\](?!\s*=[^=])|\.get\(\s*['\"]lora['\"]")


def test_only_the_tuning_strategy_reads_the_lora_group():
    readers = sorted(p for p in PACKAGE.rglob("*.py") if READS_LORA.search(p.read_text()))
    assert readers == [PACKAGE / "pipeline" / "settings.py", PACKAGE / "tuning" / "records.py"], readers


ORCHESTRATION = [PACKAGE / "train.py", *sorted((PACKAGE / "pipeline").glob("*.py"))]


def _functions(path: Path):
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_orchestration_functions_are_short():
    long = [
        f"{path.relative_to(PACKAGE.parent)}:{fn.name} ({fn.end_lineno - fn.lineno + 1} lines)"
        for path in ORCHESTRATION
        for fn in _functions(path)
        if fn.end_lineno - fn.lineno + 1 > 50
    ]
    assert not long, long


def test_train_holds_no_nested_function():
    tree = ast.parse((PACKAGE / "train.py").read_text())
    nested = [
        f"{outer.name} -> {inner.name if hasattr(inner, 'name') else 'lambda'}"
        for outer in tree.body
        if isinstance(outer, ast.FunctionDef)
        for inner in ast.walk(outer)
        if inner is not outer and isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
    ]
    assert not nested, nested
