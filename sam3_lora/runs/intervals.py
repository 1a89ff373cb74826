"""What a few seeds establish: mean, sample std and a 95% t interval; paired differences over matched seeds.

With n seeds the interval is mean ± t(0.975, n-1) · s / √n (s the sample std, n-1 in its
denominator). One seed has no spread and no interval: both are None, and the tables say n=1. A
difference between two setups is taken seed by seed over the seeds both recorded (the same seed
draws the same data, order and initialisation in both), and its interval excludes zero or it is
within noise; a seed only one of them recorded is named, never silently dropped.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

from scipy import stats

CONFIDENCE = 0.95


def recorded(values: Sequence[Optional[float]]) -> List[float]:
    """The values a run recorded: None and NaN left out."""
    return [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


@dataclass
class Summary:
    """``n`` recorded values: their mean, sample std and 95% t interval (None below two values)."""

    n: int
    mean: Optional[float]
    std: Optional[float] = None
    low: Optional[float] = None
    high: Optional[float] = None

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def summarize(values: Sequence[Optional[float]]) -> Summary:
    xs = recorded(values)
    if not xs:
        return Summary(0, None)
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return Summary(1, mean)
    std = statistics.stdev(xs)
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(xs) - 1)) * std / math.sqrt(len(xs))
    return Summary(len(xs), mean, std, mean - half, mean + half)


@dataclass
class PairedDifference:
    """``setup − reference`` over the seeds both recorded; ``unmatched``: seeds only one recorded."""

    summary: Summary
    seeds: List[object]
    unmatched: List[str] = field(default_factory=list)


def paired_difference(setup: Mapping[object, Optional[float]], reference: Mapping[object, Optional[float]]):
    """``setup`` and ``reference``: a figure by seed."""
    have = {s for s, v in setup.items() if recorded([v])}
    ref = {s for s, v in reference.items() if recorded([v])}
    both = sorted(have & ref, key=str)
    unmatched = [f"seed {s} only in the setup" for s in sorted(have - ref, key=str)]
    unmatched += [f"seed {s} only in the reference" for s in sorted(ref - have, key=str)]
    return PairedDifference(summarize([setup[s] - reference[s] for s in both]), both, unmatched)


def seed_values(runs, column: str) -> Dict[object, Optional[float]]:
    """A figure by seed from runs (objects with ``seed`` and ``values``)."""
    return {r.seed: r.values.get(column) for r in runs}
