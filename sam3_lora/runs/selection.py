"""Choices a sweep makes, declared before its runs as rules over valid-split figures, applied here.

An experiment config names each choice under ``selection`` (recorded in every run's
``.hydra/config.yaml``, so the rule is the one the runs were launched with)::

    selection:
      distillation weight:
        choose: preserve.weight                  # the override the choice sets
        among: [recipe=lora_balanced_distill]    # the setups it chooses between (their other overrides)
        maximize: valid_source_change_segm_AP    # a valid-split figure of the report, mean over seeds
        require: valid_target_best               # optional: a floor on another valid figure ...
        at_least: 0.90                           # ... this value,
        reference: recipe=lora_balanced          # ... or this many times this setup's mean

The sweep report prints each rule as the words below say it and the value it picked; held-out
figures never enter a choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from sam3_lora.core.documents import DocumentError, Fields, FiniteNumber, Kind, ListOf, MapOf, Nullable, read_yaml
from sam3_lora.core.errors import UserError
from sam3_lora.runs import layout

RULE_SHAPE = Fields(
    {
        "choose": Kind(str),
        "among": ListOf(Kind(str)),
        "maximize": Kind(str),
        "require": Nullable(Kind(str)),
        "at_least": Nullable(FiniteNumber()),
        "reference": Nullable(Kind(str)),
    },
    required=("choose", "maximize"),
)
_CONFIG_SHAPE = Fields({"selection": Nullable(MapOf(RULE_SHAPE))})
RULE_FIX = "declare each rule as conf/experiment/distill_weight.yaml's selection section does (sam3_lora/runs/selection.py)"


class SelectionError(UserError, ValueError):
    """A rule that names a figure the report does not have, or rules that disagree across runs."""


@dataclass
class SelectionRule:
    name: str
    choose: str
    maximize: str
    among: List[str] = field(default_factory=list)
    require: Optional[str] = None
    at_least: Optional[float] = None
    reference: Optional[str] = None

    def describe(self, labels: Dict[str, str]) -> str:
        among = f" among {', '.join(self.among)}" if self.among else ""
        text = f"{self.name}: the {self.choose}{among} with the largest {labels.get(self.maximize, self.maximize)}"
        if self.require is not None and self.at_least is not None:
            floor = f"{self.at_least:g}x {self.reference}'s" if self.reference else f"{self.at_least:g}"
            text += f" whose {labels.get(self.require, self.require)} is at least {floor}"
        return text + " (valid splits, mean over seeds)"


@dataclass
class Pick:
    rule: SelectionRule
    value: Optional[str]  # the chosen value of rule.choose; None when no candidate passed
    setup: Optional[str]
    candidates: List[tuple]  # (value, setup, maximized figure, passes the floor)
    floor: Optional[float] = None


def _value_of(setup: str, key: str) -> Optional[str]:
    for part in setup.split(","):
        if part.startswith(f"{key}="):
            return part[len(key) + 1 :]
    return None


def apply(rule: SelectionRule, rows: Sequence, figures: Sequence[str]) -> Pick:
    """``rows``: the report's setup rows (``setup`` and ``mean`` by figure)."""
    for figure in (rule.maximize, rule.require):
        if figure is not None and figure not in figures:
            raise SelectionError(f"selection {rule.name!r}: no figure {figure!r}; the report's valid figures: {', '.join(figures)}")
    floor = rule.at_least
    if rule.reference is not None and rule.at_least is not None:
        reference = next((r for r in rows if r.setup == rule.reference), None)
        base = None if reference is None else reference.mean.get(rule.require)
        floor = None if base is None else rule.at_least * base
    candidates = []
    for row in rows:
        value = _value_of(row.setup, rule.choose)
        rest = [p for p in row.setup.split(",") if not p.startswith(f"{rule.choose}=")]
        if value is None or not all(a in rest for a in rule.among) or row.mean.get(rule.maximize) is None:
            continue
        passes = rule.require is None or (floor is not None and (row.mean.get(rule.require) or float("-inf")) >= floor)
        candidates.append((value, row.setup, row.mean[rule.maximize], passes))
    passed = [c for c in candidates if c[3]]
    best = max(passed, key=lambda c: c[2]) if passed else None
    return Pick(rule, best[0] if best else None, best[1] if best else None, candidates, floor)


def read_rules(run_dirs: Sequence[Path]) -> List[SelectionRule]:
    """The rules the runs were launched with (those that declare any); one name, one rule."""
    rules: Dict[str, dict] = {}
    for run_dir in run_dirs:
        path = Path(run_dir) / layout.HYDRA_CONFIG
        if not path.is_file():
            continue
        try:
            declared = read_yaml(path, "run config", RULE_FIX, _CONFIG_SHAPE, SelectionError).get("selection") or {}
        except DocumentError as e:
            raise SelectionError(str(e)) from e
        for name, rule in declared.items():
            if rules.setdefault(name, rule) != rule:
                raise SelectionError(
                    f"{path}: selection {name!r} is not the rule other runs of the sweep declare ({rules[name]} "
                    f"against {rule}); a choice has one rule: give the other another name"
                )
    return [SelectionRule(name=name, **rule) for name, rule in rules.items()]


def pick_lines(picks: Sequence[Pick], labels: Dict[str, str]) -> List[str]:
    if not picks:
        return []
    lines = ["", "Choices, by the rules the sweep declared before its runs (sam3_lora/runs/selection.py):", ""]
    for pick in picks:
        chosen = f"**{pick.rule.choose}={pick.value}**" if pick.value is not None else "nothing (no setup passes)"
        floor = "" if pick.floor is None else f"; floor {pick.floor:.3f}"
        tried = ", ".join(f"{v}: {m:.3f}{'' if ok else ' (below the floor)'}" for v, _, m, ok in pick.candidates)
        lines.append(f"- {pick.rule.describe(labels)} → {chosen} ({tried}{floor})")
    return lines
