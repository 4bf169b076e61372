"""Uncertainty for success rates: Wilson score intervals, McNemar's paired test, Holm's
correction, paired intervals of a difference, equivalence, and the smallest detectable difference.

A success rate from 50 episodes is a binomial proportion; the Wilson score interval is the
standard interval that stays inside [0, 1] and behaves at 0/n and n/n. Two runs evaluated on
the same episodes are paired, so their difference is tested with McNemar's test, which only looks
at the discordant episodes (one run succeeded, the other failed). A table tests many cells, so
its p-values are adjusted with Holm's step-down method within the table's family of tests.

"Not significant" is not "no effect": with 50 episodes the exact test cannot flag any difference
below 6 episodes (0.12). A claim that a quantized run loses nothing is therefore made by an
equivalence test (two one-sided tests, TOST): the paired (1 - 2 alpha) interval of the difference
must lie inside (-margin, +margin).
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
    # In exact math 0/n gives lo = 0 and n/n gives hi = 1; in floating point the formula misses them
    # by an ulp either way (2.8e-17 at 0/7, 0.9999999999999999 at 10/10), so they are set, and the
    # rest is clamped into [0, 1].
    lo = 0.0 if successes == 0 else max(0.0, centre - half_width)
    hi = 1.0 if successes == n else min(1.0, centre + half_width)
    return lo, hi


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


def _paired_counts(a: Sequence[int], b: Sequence[int]) -> tuple[int, int, int, int]:
    """(both succeeded, only a, only b, neither) of two paired outcome lists."""
    first, second = _as_binary(a, "a"), _as_binary(b, "b")
    if len(first) != len(second) or not first:
        raise StudyError(f"paired outcomes need two non-empty lists of equal length, got {len(first)} and {len(second)}")
    both = sum(1 for x, y in zip(first, second) if x and y)
    only_first = sum(1 for x, y in zip(first, second) if x and not y)
    only_second = sum(1 for x, y in zip(first, second) if y and not x)
    return both, only_first, only_second, len(first) - both - only_first - only_second


def paired_difference_interval(a: Sequence[int], b: Sequence[int], confidence: float = 0.95) -> tuple[float, float, float]:
    """(difference, lo, hi): rate(a) - rate(b) of paired binary outcomes, with Newcombe's hybrid
    score interval for paired data (Newcombe 1998, Statistics in Medicine 17:2635, method 10).

    Each marginal rate gets its Wilson interval; the two are combined by square-and-add, with the
    correlation phi of the 2x2 table subtracting the shared part. phi's numerator AD - BC is reduced
    by n/2 when positive (and floored at 0), Newcombe's adjustment, which widens the interval
    towards the independent case; with a zero margin in the table phi is 0.
    With phi = 0 the interval equals Newcombe's interval for independent samples (method 10 of his
    1998 paper on unpaired differences). Stays inside [-1, 1] and is not degenerate at 0 or n.
    """
    both, only_a, only_b, neither = _paired_counts(a, b)
    n = both + only_a + only_b + neither
    hits_a, hits_b = both + only_a, both + only_b
    p_a, p_b = hits_a / n, hits_b / n
    lo_a, hi_a = wilson_interval(hits_a, n, confidence)
    lo_b, hi_b = wilson_interval(hits_b, n, confidence)
    margins = hits_a * (n - hits_a) * hits_b * (n - hits_b)
    cross = both * neither - only_a * only_b
    if margins == 0:
        phi = 0.0
    else:
        numerator = max(cross - n / 2.0, 0.0) if cross > 0 else float(cross)
        phi = numerator / math.sqrt(margins)
    d_a_lo, d_a_hi, d_b_lo, d_b_hi = p_a - lo_a, hi_a - p_a, p_b - lo_b, hi_b - p_b
    diff = p_a - p_b
    below = math.sqrt(max(d_a_lo ** 2 - 2.0 * phi * d_a_lo * d_b_hi + d_b_hi ** 2, 0.0))
    above = math.sqrt(max(d_a_hi ** 2 - 2.0 * phi * d_a_hi * d_b_lo + d_b_lo ** 2, 0.0))
    return diff, max(-1.0, diff - below), min(1.0, diff + above)


def equivalence_test(a: Sequence[int], b: Sequence[int], margin: float, alpha: float = 0.05) -> dict:
    """Two one-sided tests of |rate(a) - rate(b)| < margin at level alpha, through the paired
    (1 - 2 alpha) interval (the interval-inclusion form of TOST). Returns
    {"difference", "lo", "hi", "margin", "alpha", "equivalent"}."""
    if not 0.0 < margin < 1.0:
        raise StudyError(f"equivalence margin must lie strictly between 0 and 1, got {margin!r}")
    if not 0.0 < alpha < 0.5:
        raise StudyError(f"equivalence alpha must lie strictly between 0 and 0.5, got {alpha!r}")
    diff, lo, hi = paired_difference_interval(a, b, confidence=1.0 - 2.0 * alpha)
    return {"difference": diff, "lo": lo, "hi": hi, "margin": margin, "alpha": alpha,
            "equivalent": -margin < lo and hi < margin}


def smallest_detectable_difference(n: int, alpha: float = 0.05, family_size: int = 1) -> float | None:
    """The smallest difference in success rate (episodes / n) that the exact McNemar test can call
    significant with n paired episodes: all m discordant episodes go one way, p = 2 / 2^m, and Holm's
    first step compares the smallest p of a family of `family_size` tests with alpha / family_size.
    None when even n one-way discordant episodes are not enough."""
    if not isinstance(n, int) or n <= 0:
        raise StudyError(f"smallest_detectable_difference needs a positive number of episodes, got n={n!r}")
    if not isinstance(family_size, int) or family_size < 1:
        raise StudyError(f"family_size must be a positive integer, got {family_size!r}")
    threshold = alpha / family_size
    for m in range(1, n + 1):
        if 2.0 * 0.5 ** m < threshold:
            return m / n
    return None
