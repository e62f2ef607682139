"""Is a gap between the forget set and the held-out control more than sampling noise?

The audit's checks compare a number of the forget set with the same number of the held-out set (the
records the model never saw) plus a margin. On a few dozen records that difference moves a lot by
chance alone: with 20 forget and 20 held-out records the MIA AUC of two sets drawn from the *same*
distribution has a standard deviation of about 0.09, so a band of 0.5 +- 0.1 is left by a model that
never saw the data about a quarter of the time. These tests give each check a p-value, so the verdict
can ask for a gap that is both beyond the margin (large enough to matter) and unlikely under "forget
and held-out records are exchangeable" (not noise).

- ``excess_test``: one-sided permutation test that the forget records' mean is above the
  control's (levels such as ROUGE-L, and recoveries as per-record changes under an attack);
- ``auc_test``: two-sided Mann-Whitney test that the MIA AUC differs from 0.5 (the AUC is the
  Mann-Whitney U statistic over n*m, so this is the exact test of that statistic).

Each returns ``{"p_value": p, "smallest_p_value": s}``, where s is the smallest p-value any arrangement of
that many records could give (one split in C(n + m, n), two for a two-sided test): on sets so small that
s is above the level asked for, the test could never reject, and the verdict lets the margin decide
alone rather than pass everything.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np
from scipy import stats

RESAMPLES = 9999  # Monte Carlo permutations when the exact enumeration is larger; a fixed seed keeps reports reproducible


def _present(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None], dtype=np.float64)


def smallest_p_value(n: int, m: int, sides: int = 1) -> float:
    """The smallest p-value a rank or permutation test of n against m records can give."""
    return min(1.0, sides / math.comb(n + m, n))


def _result(p_value: float, n: int, m: int, sides: int = 1) -> dict[str, float]:
    return {"p_value": p_value, "smallest_p_value": smallest_p_value(n, m, sides)}


def _permutation_p_value(x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """One-sided p-value of mean(x) - mean(y) over relabellings of the pooled records: every split
    when there are at most ``RESAMPLES`` of them, else that many random ones (counting the observed
    labelling, so p is never 0)."""
    pooled, n = np.concatenate([x, y]), len(x)
    observed = x.mean() - y.mean()
    total, splits = pooled.sum(), math.comb(len(pooled), n)
    if splits <= RESAMPLES:
        picks = np.array(list(itertools.combinations(range(len(pooled)), n)))
        sums = pooled[picks].sum(axis=1)
    else:
        order = np.argsort(np.random.default_rng(seed).random((RESAMPLES, len(pooled))), axis=1)
        sums = pooled[order[:, :n]].sum(axis=1)
    differences = sums / n - (total - sums) / len(y)
    tolerance = 1e-12 * max(1.0, abs(observed))  # equal splits must count as "as large" despite rounding
    hits = int(np.count_nonzero(differences >= observed - tolerance))
    return hits / splits if splits <= RESAMPLES else (hits + 1) / (RESAMPLES + 1)


def excess_test(forget: Sequence[float | None], control: Sequence[float | None], seed: int = 0) -> dict[str, float] | None:
    """P(mean(forget) - mean(control) >= the observed difference) when the records' labels are
    exchangeable (a permutation test; exact when the splits number at most ``RESAMPLES``).
    None (records without the metric) are left out; None when either side has no records."""
    x, y = _present(forget), _present(control)
    if len(x) == 0 or len(y) == 0:
        return None
    if np.ptp(np.concatenate([x, y])) == 0:
        return _result(1.0, len(x), len(y))  # every value equal: no difference to find
    return _result(_permutation_p_value(x, y, seed), len(x), len(y))


def change_excess_test(forget_before: Sequence[float | None], forget_after: Sequence[float | None],
                       control_before: Sequence[float | None], control_after: Sequence[float | None],
                       seed: int = 0) -> dict[str, float] | None:
    """The recovery test: each record's change under an attack (after - before), forget against control."""
    def changes(before, after):
        return [None if b is None or a is None else a - b for b, a in zip(before, after)]

    return excess_test(changes(forget_before, forget_after), changes(control_before, control_after), seed)


def auc_test(members: Sequence[float], non_members: Sequence[float]) -> dict[str, float] | None:
    """Two-sided p-value of AUC = 0.5 (Mann-Whitney U; exact for small sets without ties)."""
    x, y = _present(members), _present(non_members)
    if len(x) == 0 or len(y) == 0:
        return None
    if np.ptp(np.concatenate([x, y])) == 0:
        return _result(1.0, len(x), len(y), sides=2)
    return _result(float(stats.mannwhitneyu(x, y, alternative="two-sided").pvalue), len(x), len(y), sides=2)
