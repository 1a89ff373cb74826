"""The docs against the tree: README.md and every docs/*.md page (docs/results/ holds generated output:
its files are link targets, not pages checked here). Each failure names its page and line.

1. **Links.** Every relative link and image, ``[text](target)`` / ``![alt](target)`` outside code,
   resolves: the file or folder exists (relative to the page), and an ``#anchor`` (alone: the page
   itself; ``file.md#anchor``: that page) is the slug of one of the target's headings under GitHub's
   rule: the heading's text (inline code's backticks and link targets dropped) lowercased, every
   character that is not a letter, digit, space, ``-`` or ``_`` removed, each space turned into ``-``;
   a slug seen before on the page gets ``-1``, ``-2``, ... External links (``http:``, ``https:``,
   ``mailto:``) are not fetched.

2. **Commands.** Every ``python -m sam3_lora.<command> ...`` (and ``torchrun ... -m sam3_lora.<command>``)
   in a fenced code block other than a ``python`` one. A line is read as the shell reads it (quotes,
   ``# comments``), joined to the next at a trailing ``\\``.

   Placeholders, the one rule the docs follow in commands:

   - a bare ``...`` argument stands for "your other overrides" and is dropped;
   - a value holding ``<...>`` (``outputs/<date>/<time>``, ``multirun/<date>/<time>``) or ``...``
     (``outputs/.../adapter.safetensors``), or starting with ``/path/to/``, is a path the reader fills
     in: it is replaced by a temporary folder's path.

   A Hydra command (a module with ``@hydra.main(config_name=...)``; ``check``, which composes ``train``'s
   config, likewise): Hydra's own flags are dropped (``-m``/``--multirun``, ``--cfg job``, ``--help``,
   ``--hydra-help``) and the overrides are composed with ``sam3_lora.pipeline.settings.compose`` — the
   config ``--cfg job`` prints; nothing is built, read or trained. With ``-m``, every value of each sweep
   override (``a=1,2``, ``b=[x],[y]``, ``range(...)``, read by Hydra's override parser, as its basic
   sweeper does) is composed, the other sweeps at their first value, and so is every value an
   experiment's ``hydra.sweeper.params`` lists. Any other command (``describe``, ``report``: argparse):
   the module exists and its ``main()`` parses the arguments — run with ``ArgumentParser.parse_args``
   stopped right after parsing, so nothing is read or written. ``python tools/<name>.py`` lines: the
   file exists.

3. **Python snippets.** Every ``python`` fenced block parses, and its import statements (only those)
   run. A snippet with a comment line ``# needs: pkg, pkg`` is skipped when one of those packages is
   not installed (transformers and peft are, in the dev install).

The helpers are tested on text made to fail (``test_the_checks_fail_on_...``), so a check that finds
nothing cannot pass for one that finds no problem; the counts test says the pages were read at all.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import inspect
import re
import shlex
import sys
import tempfile
from typing import Dict, Iterator, List, NamedTuple, Optional
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
HYDRA_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p"}
HYDRA_FLAGS = {"-m", "--multirun", "--help", "-h", "--hydra-help", "--resolve", "--run", "-r", "--info", "-i"}


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# ---------------------------------------------------------------------------------------- markdown


class Block(NamedTuple):
    page: Path
    line: int  # of the block's first content line
    lang: str
    lines: List[str]


def split_fences(text: str):
    """The page's lines with fenced blocks blanked out (line numbers kept), and the blocks."""
    prose, blocks, fence, lang, start, body = [], [], None, "", 0, []
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence is None and m:
            fence, lang, start, body = m.group(1), m.group(2).lower(), number + 1, []
            prose.append("")
        elif fence is not None and line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
            blocks.append((start, lang, body))
            fence = None
            prose.append("")
        elif fence is not None:
            body.append(line)
            prose.append("")
        else:
            prose.append(line)
    return prose, blocks


def blocks_of(page: Path, text: Optional[str] = None) -> List[Block]:
    _, blocks = split_fences(page.read_text() if text is None else text)
    return [Block(page, start, lang, body) for start, lang, body in blocks]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (before duplicates are numbered)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").strip().lower()
    return "".join(ch for ch in text if ch.isalnum() or ch in "-_ ").replace(" ", "-")


def anchors(text: str) -> List[str]:
    prose, _ = split_fences(text)
    seen: Dict[str, int] = {}
    out = []
    for line in prose:
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        out.append(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return out


def links(text: str) -> Iterator[tuple]:
    """(line, target) of every link outside code."""
    prose, _ = split_fences(text)
    joined = "\n".join(prose)
    joined = CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), joined)
    for m in LINK.finditer(joined):
        yield joined.count("\n", 0, m.start()) + 1, m.group("target")


def link_problem(page: Path, target: str, text_of=lambda p: p.read_text()) -> Optional[str]:
    if EXTERNAL.match(target):
        return None
    path_part, _, anchor = target.partition("#")
    dest = (page.parent / path_part).resolve() if path_part else page
    if not dest.exists():
        return f"{target}: no such file or folder ({rel(dest)})"
    if anchor:
        if dest.is_dir() or dest.suffix != ".md":
            return f"{target}: an anchor into {rel(dest)}, which is not a markdown page"
        found = anchors(text_of(dest))
        if anchor not in found:
            return f"{target}: no heading of {rel(dest)} has the anchor #{anchor} (its anchors: {', '.join(found)})"
    return None


# ---------------------------------------------------------------------------------------- commands


class Command(NamedTuple):
    where: str
    line: str  # as written (continuations joined)
    tokens: List[str]


def commands_in(block: Block) -> Iterator[Command]:
    if block.lang in ("python", "py"):
        return
    pending, first = "", 0
    for offset, raw in enumerate(block.lines):
        if not pending:
            first = block.line + offset
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line, pending = pending + raw, ""
        where = f"{rel(block.page)}:{first}"
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as e:
            yield Command(where, line.strip(), ["<unparsable>", str(e)])
            continue
        if tokens and (_runs_our_module(tokens) or _runs_a_tool(tokens)):
            yield Command(where, line.strip(), tokens)


def _is_python(token: str) -> bool:
    return Path(token).name.startswith("python") or token in ("$(PY)", "$PY")


def _runs_our_module(tokens: List[str]) -> bool:
    if not (_is_python(tokens[0]) or Path(tokens[0]).name == "torchrun"):
        return False
    return any(a == "-m" and b.startswith("sam3_lora.") for a, b in zip(tokens, tokens[1:]))


def _runs_a_tool(tokens: List[str]) -> bool:
    return _is_python(tokens[0]) and len(tokens) > 1 and tokens[1].endswith(".py")


def is_placeholder(value: str) -> bool:
    return ("<" in value and ">" in value) or "..." in value or value.startswith("/path/to/")


def fill(token: str, tmp: str) -> str:
    key, eq, value = token.partition("=")
    if eq and not key.startswith("-"):
        return f"{key}={tmp}" if is_placeholder(value) else token
    return tmp if is_placeholder(token) else token


def config_name(module: str) -> Optional[str]:
    """The config a command composes: its ``@hydra.main(config_name=...)``, or the one it passes to
    ``compose`` (``check`` composes ``train``'s); None for a command that is not a Hydra app."""
    spec = importlib.util.find_spec(module)
    source = Path(spec.origin).read_text()
    m = re.search(r"@hydra\.main\([^)]*config_name=\"(\w+)\"", source) or re.search(
        r"\bcompose\(\s*\"(\w+)\"", source
    )
    return m.group(1) if m else None


class _Parsed(Exception):
    pass


def argparse_problem(module: str, argv: List[str]) -> Optional[str]:
    """Run the module's main() until its argument parser has parsed ``argv``; nothing after that runs."""
    mod = importlib.import_module(module)
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed

    takes_argv = bool(inspect.signature(mod.main).parameters)
    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop), mock.patch.object(
        sys, "argv", [module, *argv]
    ):
        try:
            mod.main(argv) if takes_argv else mod.main()
        except _Parsed:
            return None
        except SystemExit as e:
            return f"its argument parser refused {argv} (exit {e.code})"
    return "main() returned without parsing arguments with argparse: the test cannot check it cheaply"


def sweeper_params(name: str, overrides: List[str]) -> Dict[str, str]:
    """``hydra.sweeper.params`` of a composed config (an experiment's sweep)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from sam3_lora.core.conf import CONF_DIR
    from sam3_lora.pipeline.settings import register

    register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name=name, overrides=overrides, return_hydra_config=True)
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    return {str(k): str(v) for k, v in params.items()}


def hydra_runs(overrides: List[str], multirun: bool, name: str) -> List[List[str]]:
    """The override lists to compose: one, or for a multirun each value of each sweep (the command's own
    and its experiment's ``hydra.sweeper.params``, as Hydra's basic sweeper joins them), one sweep at a
    time, the others at their first value."""
    if not multirun:
        return [overrides]
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()

    def values(o) -> List[str]:
        if o.is_sweep_override():
            return [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
        return [o.input_line if o.input_line else f"{o.get_key_element()}={o.get_value_element_as_str()}"]

    parsed = parser.parse_overrides(overrides)
    choices = [values(o) for o in parsed]
    given = {o.get_key_element().lstrip("+~") for o in parsed}
    params = sweeper_params(name, [c[0] for c in choices])
    choices += [values(parser.parse_overrides([f"{k}={v}"])[0]) for k, v in params.items() if k not in given]
    firsts = [c[0] for c in choices]
    return [firsts] + [firsts[:i] + [v] + firsts[i + 1 :] for i, c in enumerate(choices) for v in c[1:]]


def command_problem(tokens: List[str], tmp: str) -> Optional[str]:
    """Why a documented command would not start as written (None: it would)."""
    if tokens[0] == "<unparsable>":
        return f"the shell cannot split it: {tokens[1]}"
    if _runs_a_tool(tokens) and not _runs_our_module(tokens):
        return None if (ROOT / tokens[1]).is_file() else f"{tokens[1]}: no such file"
    i = next(i for i, (a, b) in enumerate(zip(tokens, tokens[1:])) if a == "-m" and b.startswith("sam3_lora."))
    module, args = tokens[i + 1], [fill(t, tmp) for t in tokens[i + 2 :] if t != "..."]
    if importlib.util.find_spec(module) is None:
        return f"no module {module}"
    name = config_name(module)
    if name is None:
        return argparse_problem(module, args)
    from sam3_lora.pipeline.settings import compose

    overrides, multirun, skip = [], False, False
    for n, arg in enumerate(args):
        if skip:
            skip = False
        elif arg in ("-m", "--multirun"):
            multirun = True
        elif arg in HYDRA_FLAGS:
            pass
        elif arg in HYDRA_FLAGS_WITH_VALUE:
            skip = True
        elif arg in ("--config-name", "-cn"):
            name, skip = args[n + 1], True
        elif arg.startswith("-"):
            if not arg.startswith(("--cfg=", "--config-name=", "--info=")):
                return f"{arg}: not a Hydra flag this test knows"
            if arg.startswith("--config-name="):
                name = arg.split("=", 1)[1]
        else:
            overrides.append(arg)
    try:
        runs = hydra_runs(overrides, multirun, name)
    except Exception as e:  # the override parser's or Hydra's own refusal
        return f"{type(e).__name__}: {e}"
    for run in runs:
        try:
            compose(name, run)
        except Exception as e:
            return f"compose({name!r}, {run}) failed: {type(e).__name__}: {e}"
    return None


# ---------------------------------------------------------------------------------------- snippets

NEEDS = re.compile(r"^\s*#\s*needs:\s*(.+?)\s*$", re.MULTILINE)


def snippet_problem(code: str) -> Optional[str]:
    """Why a Python snippet's imports fail (None: they run); raises pytest's skip per its ``# needs:``."""
    for m in NEEDS.finditer(code):
        missing = [p.strip() for p in m.group(1).split(",") if importlib.util.find_spec(p.strip()) is None]
        if missing:
            pytest.skip(f"needs {', '.join(missing)}, not installed")
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        return f"not valid Python: {e}"
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    if not imports:
        return "imports nothing: the test checks a snippet's imports, so say what it uses"
    for node in imports:
        try:
            _import(node)
        except Exception as e:
            return f"{type(e).__name__}: {e}  (in: {ast.unparse(node)!r})"
    return None


def _import(node) -> None:
    """What an ``import`` / ``from ... import`` statement imports, through importlib (nothing else runs)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            importlib.import_module(alias.name)
        return
    module = importlib.import_module(node.module)
    for alias in node.names:
        if alias.name == "*" or hasattr(module, alias.name):
            continue
        try:  # a submodule not imported yet, as the import statement would find it
            importlib.import_module(f"{node.module}.{alias.name}")
        except ModuleNotFoundError:
            raise ImportError(f"cannot import name {alias.name!r} from {node.module!r}") from None


# ---------------------------------------------------------------------------------------- the tests


def _all_links():
    return [(page, line, target) for page in PAGES for line, target in links(page.read_text())]


def _all_commands():
    return [c for page in PAGES for block in blocks_of(page) for c in commands_in(block)]


def _all_snippets():
    return [b for page in PAGES for b in blocks_of(page) if b.lang in ("python", "py")]


LINKS, COMMANDS, SNIPPETS = _all_links(), _all_commands(), _all_snippets()


@pytest.fixture(scope="module")
def placeholder_dir():
    with tempfile.TemporaryDirectory(prefix="docs_placeholder_") as d:
        yield d


@pytest.mark.parametrize("page,line,target", LINKS, ids=[f"{rel(p)}:{n}:{t}" for p, n, t in LINKS])
def test_every_relative_link_resolves(page, line, target):
    problem = link_problem(page, target)
    assert problem is None, f"{rel(page)}:{line}: {problem}"


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_every_documented_command_composes(command, placeholder_dir):
    problem = command_problem(command.tokens, placeholder_dir)
    assert problem is None, f"{command.where}: `{command.line}`: {problem}"


@pytest.mark.parametrize("block", SNIPPETS, ids=[f"{rel(b.page)}:{b.line}" for b in SNIPPETS])
def test_every_python_snippet_imports_what_it_names(block):
    problem = snippet_problem("\n".join(block.lines))
    assert problem is None, f"{rel(block.page)}:{block.line}: {problem}"


def test_the_pages_were_read():
    """A parser that finds nothing would pass every test above: the pages hold what they are known to."""
    pages = {p.name for p in PAGES}
    assert {"README.md", "data.md", "training.md", "keeping.md", "using.md", "configuration.md"} <= pages
    assert len(LINKS) >= 50, f"only {len(LINKS)} links found"
    assert len(COMMANDS) >= 30, f"only {len(COMMANDS)} commands found"
    assert len(SNIPPETS) >= 3, f"only {len(SNIPPETS)} Python snippets found"
    assert any(c.where.startswith("README.md:") for c in COMMANDS)


def test_every_docs_page_is_linked_from_the_readme():
    readme = ROOT / "README.md"
    linked = {(readme.parent / t.partition("#")[0]).resolve() for _, t in links(readme.read_text())}
    missing = [rel(p) for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"README.md links none of: {', '.join(missing)}"


# ------------------------------------------------------------------ the checks, on text made to fail


def test_the_slug_rule_is_githubs():
    text = "# A: b\n## `lora=heads` and the *trunk* cache\n## Δ segm AP — why?\n# A: b\n# A: b\n"
    assert anchors(text) == ["a-b", "loraheads-and-the-trunk-cache", "δ-segm-ap--why", "a-b-1", "a-b-2"]
    assert slug("Sweeps, clusters, multiple GPUs") == "sweeps-clusters-multiple-gpus"
    assert slug("What tuning gains, what it forgets, and what keeps it: the results table") == (
        "what-tuning-gains-what-it-forgets-and-what-keeps-it-the-results-table"
    )


def test_the_checks_fail_on_broken_links(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n## Real section\n")
    page.write_text(
        "# Page\n\nSee [a](other.md#real-section), [b](missing.md), [c](other.md#no-such),\n"
        "[d](#page), [e](#nowhere), [f](https://example.com/x), `[g](in-code.md)`.\n"
        "```\n[h](in-a-fence.md)\n```\n[multi\nline](other.md)\n"
    )
    found = {t: link_problem(page, t) for _, t in links(page.read_text())}
    assert set(found) == {"other.md#real-section", "missing.md", "other.md#no-such", "#page", "#nowhere",
                          "https://example.com/x", "other.md"}
    assert [t for t, p in found.items() if p] == ["missing.md", "other.md#no-such", "#nowhere"]


def test_the_checks_fail_on_broken_commands(tmp_path):
    block = Block(
        tmp_path / "p.md",
        3,
        "bash",
        [
            "python -m sam3_lora.train lora.rnk=8                      # a misspelt key",
            "python -m sam3_lora.train -m lora.rank=4,8 \\",
            "    lora.alpha=8,oops                                       # a bad sweep value",
            "python -m sam3_lora.train recipe=no_such_recipe",
            "python -m sam3_lora.train tuning=lora_balanced              # the group's old name",
            "python -m sam3_lora.train hydra.launcher.partition=gpu      # needs launcher=slurm",
            "python -m sam3_lora.nothing",
            "python -m sam3_lora.describe a.safetensors extra_argument",
            "python tools/no_such_tool.py",
            "python -m sam3_lora.train experiment=quickstart ... dataset.root=/path/to/x run_dir_is_not_here=1",
            "python -m sam3_lora.train 'unbalanced",
            "make demo                                                   # not ours: not collected",
        ],
    )
    cmds = list(commands_in(block))
    assert [int(c.where.rsplit(":", 1)[1]) for c in cmds] == [3, 4, 6, 7, 8, 9, 10, 11, 12, 13]
    problems = [command_problem(c.tokens, str(tmp_path)) for c in cmds]
    assert all(problems), [(c.line, p) for c, p in zip(cmds, problems) if not p]
    assert "rnk" in problems[0] and "oops" in problems[1] and "tuning" in problems[3] and "partition" in problems[4]


def test_the_checks_accept_what_the_docs_may_write(tmp_path):
    good = [
        "python -m sam3_lora.train -m 'lora.targets=[q_proj,v_proj],[all]' lora.rank=4,8   # a sweep",
        "python -m sam3_lora.train --cfg job experiment=quickstart recipe=lora_balanced",
        "python -m sam3_lora.evaluate run_dir=outputs/<date>/<time> split=test",
        "python -m sam3_lora.report multirun/<date>/<time>",
        "torchrun --nproc_per_node 2 -m sam3_lora.train hydra.run.dir=outputs/ddp ...",
    ]
    cmds = list(commands_in(Block(tmp_path / "p.md", 1, "", good)))
    assert len(cmds) == len(good)
    assert [command_problem(c.tokens, str(tmp_path)) for c in cmds] == [None] * len(good)


def test_the_checks_fail_on_broken_snippets():
    assert "ModuleNotFoundError" in snippet_problem("import sam3_lora.no_such_module\n")
    assert "ImportError" in snippet_problem("from sam3_lora.lora import no_such_name\n")
    assert "not valid Python" in snippet_problem("from sam3_lora import (\n")
    assert snippet_problem("from sam3_lora.lora import load_adapter\nx = undefined_name  # not run\n") is None
    with pytest.raises(pytest.skip.Exception):
        snippet_problem("# needs: no_such_package_here\nimport no_such_package_here\n")
