"""The package's shape: commands at the top, the library in subpackages that never import a command,
and no module named like one of Python's own."""

import ast
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
    assert COMMANDS == ["check", "describe", "evaluate", "export", "predict", "report", "train"]
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
