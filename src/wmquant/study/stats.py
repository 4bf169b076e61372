"""Uncertainty for success rates: Wilson score intervals and McNemar's paired test.

A success rate from 50 episodes is a binomial proportion; the Wilson score interval is the
standard interval that stays inside [0, 1] and behaves at 0/n and n/n. Two runs evaluated on
the same episodes are paired, so their difference is tested with McNemar's test, which only looks
at the discordant episodes (one run succeeded, the other failed).
"""

from __future__ import annotations

import math
from typing import Sequence

from scipy import stats as _scipy_stats

from ..errors import StudyError

MCNEMAR_METHODS = ("exact", "chi2_cc")


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (without continuity correction) for `successes` out of `n` trials.

    Returns (lo, hi), both in [0, 1]. `confidence` is two-sided, e.g. 0.95.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise StudyError(f"wilson_interval needs a positive integer number of trials, got n={n!r}")
    if not isinstance(successes, int) or isinstance(successes, bool) or not 0 <= successes <= n:
        raise StudyError(f"wilson_interval needs 0 <= successes <= n={n}, got successes={successes!r}")
    if not 0.0 < confidence < 1.0:
        raise StudyError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    z = float(_scipy_stats.norm.ppf(0.5 + confidence / 2.0))
    p_hat = successes / n
    z2_over_n = z * z / n
    centre = (p_hat + z2_over_n / 2.0) / (1.0 + z2_over_n)
    half_width = (z / (1.0 + z2_over_n)) * math.sqrt(p_hat * (1.0 - p_hat) / n + z2_over_n / (4.0 * n))
    # Clamp the rounding noise at the boundaries (0/n and n/n give exactly 0 and 1 in exact math).
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


def _as_binary(values: Sequence[int], name: str) -> list[int]:
    out = []
    for v in values:
        if v in (0, 1) or v is True or v is False:
            out.append(int(v))
        else:
            raise StudyError(f"mcnemar: {name} must hold only 0/1 outcomes, found {v!r}")
    return out


def mcnemar(a: Sequence[int], b: Sequence[int], method: str = "exact") -> dict:
    """McNemar's test for two paired binary outcome lists (one entry per episode, same order).

    Returns a dict with
      b: episodes where `a` succeeded and `b` failed,
      c: episodes where `a` failed and `b` succeeded,
      n: number of paired episodes,
      statistic: the chi-square statistic (method "chi2_cc") or b (method "exact"),
      p_value: two-sided p-value,
      method: "exact" (binomial test of b against Binomial(b + c, 1/2), two-sided by doubling the
              smaller tail, capped at 1) or "chi2_cc" ((|b - c| - 1)^2 / (b + c), 1 degree of
              freedom, Edwards' continuity correction).
    With no discordant pairs the runs agree on every episode and p_value is 1.
    """
    if method not in MCNEMAR_METHODS:
        raise StudyError(f"unknown McNemar method {method!r}; valid: {', '.join(MCNEMAR_METHODS)}")
    first, second = _as_binary(a, "a"), _as_binary(b, "b")
    if len(first) != len(second):
        raise StudyError(f"mcnemar needs paired outcomes of equal length, got {len(first)} and {len(second)}")
    only_first = sum(1 for x, y in zip(first, second) if x == 1 and y == 0)
    only_second = sum(1 for x, y in zip(first, second) if x == 0 and y == 1)
    discordant = only_first + only_second
    if discordant == 0:
        statistic, p_value = 0.0, 1.0
    elif method == "exact":
        statistic = float(only_first)
        tail = float(_scipy_stats.binom.cdf(min(only_first, only_second), discordant, 0.5))
        p_value = min(1.0, 2.0 * tail)
    else:
        statistic = (abs(only_first - only_second) - 1.0) ** 2 / discordant
        p_value = float(_scipy_stats.chi2.sf(statistic, df=1))
    return {"b": only_first, "c": only_second, "n": len(first), "statistic": statistic,
            "p_value": p_value, "method": method}


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as the input), for a family of tests."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running_max = 0.0
    for rank, index in enumerate(order):
        running_max = max(running_max, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running_max
    return adjusted
