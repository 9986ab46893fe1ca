"""The leaderboard's statistical test: did a mean drop by more than its noise (and the drift floor)?

A leaderboard entry holds ``n`` independent *units* of one (method, task, fraction): pre-training
seeds, each the mean of its transfer seeds, when the runs have more than one pre-training seed;
transfer seeds otherwise. Pre-training is chaotic: another CPU, thread count or kernel set moves
its result as a new seed does, so on a fresh machine the runs of a suite are a new draw from the
distribution the baseline's units sample.

The check is a **one-sided pooled two-sample t-test** of the current units against the baseline's:

    gain   = (current mean − baseline mean), signed so that positive is better
    s_p²   = ((n_b − 1)·s_b² + (n_c − 1)·s_c²) / (n_b + n_c − 2)
    se     = s_p · √(1/n_b + 1/n_c)
    margin = t_{1−α}(n_b + n_c − 2) · se + floor

``regressed`` when ``gain < −margin``, ``improved`` when ``gain > margin``. With one current unit
(``n_c = 1``) this is the prediction interval of a new draw from the baseline. Under "nothing
changed" (the same procedure on another machine) an entry is flagged with probability at most α
(``alpha``, one-sided); ``floor`` covers a systematic shift between CPUs that seeds do not show
(measured, see docs/leaderboards.md). ``p`` is the one-sided p-value of the drop beyond the floor.
With no spread to estimate (``n_b + n_c < 3``) the margin is the floor alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from cxrbench.errors import CxrbenchError

DEFAULT_ALPHA = 0.001
DEFAULT_FLOOR = 0.005


@dataclass(frozen=True)
class Policy:
    """The gate's settings, stored in the leaderboard file: one-sided α per entry, and the
    absolute drift floor added to every margin."""

    alpha: float = DEFAULT_ALPHA
    floor: float = DEFAULT_FLOOR

    def __post_init__(self) -> None:
        for name, upper in (("alpha", 0.5), ("floor", math.inf)):
            value = getattr(self, name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not (number and math.isfinite(value) and 0 <= value < upper):
                bound = "in [0, 0.5)" if name == "alpha" else "≥ 0"
                raise CxrbenchError(f"policy {name}: expected a number {bound}, got {value!r}")
        if self.alpha == 0:
            raise CxrbenchError("policy alpha: 0 would never flag anything")

    def describe(self) -> str:
        return f"one-sided pooled t-test, α = {self.alpha:g} per entry, floor {self.floor:g}"


@dataclass(frozen=True)
class Outcome:
    """One entry's test: the gain (positive = better), its margin and the drop's p-value."""

    gain: float
    margin: float
    se: float | None  # None: no spread could be estimated
    df: int
    p_drop: float | None  # P(a gain this low | nothing changed beyond the floor); None: no se

    @property
    def status(self) -> str:
        if self.gain < -self.margin:
            return "regressed"
        return "improved" if self.gain > self.margin else "ok"


@dataclass(frozen=True)
class Sample:
    """What the test needs of one side: the mean, the sample std (ddof 1) and the unit count."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Sample:
        if len(values) == 0:
            raise CxrbenchError("the gate needs at least one unit on each side")
        array = np.asarray(values, dtype=np.float64)
        std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
        return cls(float(array.mean()), std, len(array))


def t_test(baseline: Sample, current: Sample, higher_is_better: bool, policy: Policy) -> Outcome:
    """The pooled t-test of the ``current`` units against the ``baseline``'s (see the module
    doc)."""
    delta = current.mean - baseline.mean
    gain = round(delta if higher_is_better else -delta, 12)  # 0.79 − 0.80 is −0.01, not beyond
    df = baseline.n + current.n - 2
    if df < 1:
        return Outcome(gain, policy.floor, None, df, None)
    pooled = ((baseline.n - 1) * baseline.std**2 + (current.n - 1) * current.std**2) / df
    se = math.sqrt(pooled * (1 / baseline.n + 1 / current.n))
    if se == 0:
        return Outcome(gain, policy.floor, 0.0, df, None)
    t_crit = float(stats.t.ppf(1 - policy.alpha, df))
    p_drop = float(stats.t.cdf((gain + policy.floor) / se, df))
    return Outcome(gain, t_crit * se + policy.floor, se, df, p_drop)


def detectable(baseline: Sample, units: int, policy: Policy) -> float:
    """The margin a check with ``units`` current units gets when their spread is the baseline's:
    the smallest drop it flags (the gate's power, printed by ``leaderboard update``)."""
    like = Sample(baseline.mean, baseline.std, units)
    return t_test(baseline, like, True, policy).margin


def suite_false_alarm(alpha: float, entries: int) -> float:
    """The chance that at least one of ``entries`` independent unchanged entries is flagged
    (regressed) at one-sided ``alpha`` each: 1 − (1 − α)^entries, at most entries × α."""
    return 1 - (1 - alpha) ** entries
