"""Wilson intervals, McNemar's test, Holm's correction, paired difference intervals, equivalence
and the smallest detectable difference, against statsmodels / scipy and hand-computed values."""

import math

import pytest

from wmquant.errors import StudyError
from wmquant.study.stats import (
    equivalence_test,
    holm_adjust,
    mcnemar,
    paired_difference_interval,
    smallest_detectable_difference,
    wilson_interval,
)

statsmodels = pytest.importorskip("statsmodels")
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar  # noqa: E402
from statsmodels.stats.multitest import multipletests  # noqa: E402
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint  # noqa: E402


@pytest.mark.parametrize("successes, n, lo, hi", [
    # Newcombe (1998), Statistics in Medicine 17:857-872, Table I, method 3 (Wilson score).
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0000, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_newcombe_table(successes, n, lo, hi):
    got = wilson_interval(successes, n)
    assert got == pytest.approx((lo, hi), abs=5e-5)


def test_wilson_closed_form_for_half():
    # p = 1/2: centre 1/2, half width z*sqrt(n/4 + z^2/4) / (n + z^2) (hand-derived).
    z = 1.959963984540054
    n = 50
    half = z * math.sqrt(n / 4 + z * z / 4) / (n + z * z)
    assert wilson_interval(25, 50) == pytest.approx((0.5 - half, 0.5 + half), abs=1e-12)


def test_wilson_bounds_are_exactly_0_and_1_at_no_and_all_successes():
    # in floating point the formula leaves e.g. 2.8e-17 at 0/7 and 0.9999999999999999 at 10/10, and
    # overshoots 1 at 16/16
    for n in range(1, 301):
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0
    assert wilson_interval(1, 1) == pytest.approx((0.2065493143772375, 1.0), abs=1e-12)  # lo = 1 / (1 + z^2)


def test_wilson_boundaries_and_confidence():
    assert wilson_interval(0, 50)[0] == 0.0
    assert wilson_interval(50, 50)[1] == 1.0
    lo95, hi95 = wilson_interval(47, 50)
    lo99, hi99 = wilson_interval(47, 50, confidence=0.99)
    assert lo99 < lo95 < 47 / 50 < hi95 < hi99
    # Symmetry: k successes mirror n - k successes.
    lo, hi = wilson_interval(12, 50)
    assert wilson_interval(38, 50) == pytest.approx((1 - hi, 1 - lo), abs=1e-12)


@pytest.mark.parametrize("args", [(1, 0), (0, 0), (-1, 10), (11, 10), (1.5, 10), (1, 10, 1.0)])
def test_wilson_rejects_bad_input(args):
    with pytest.raises(StudyError):
        wilson_interval(*args)


def _pairs(only_a, only_b, both=0, neither=0):
    a = [1] * only_a + [0] * only_b + [1] * both + [0] * neither
    b = [0] * only_a + [1] * only_b + [1] * both + [0] * neither
    return a, b


@pytest.mark.parametrize("only_a, only_b, p_value", [
    (1, 6, 16 / 128),        # 2 * (C(7,0) + C(7,1)) / 2^7
    (0, 5, 2 / 32),          # 2 * 1 / 2^5
    (2, 8, 112 / 1024),      # 2 * (1 + 10 + 45) / 2^10
    (3, 3, 1.0),             # balanced: doubling the tail exceeds 1, capped
    (0, 0, 1.0),             # no discordant pair
])
def test_mcnemar_exact_hand_computed(only_a, only_b, p_value):
    a, b = _pairs(only_a, only_b, both=20, neither=7)
    test = mcnemar(a, b)
    assert (test["b"], test["c"], test["n"], test["method"]) == (only_a, only_b, only_a + only_b + 27, "exact")
    assert test["p_value"] == pytest.approx(p_value, rel=1e-12)


def test_mcnemar_is_symmetric_in_its_arguments():
    a, b = _pairs(2, 9, both=10)
    forward, backward = mcnemar(a, b), mcnemar(b, a)
    assert (forward["b"], forward["c"]) == (backward["c"], backward["b"])
    assert forward["p_value"] == pytest.approx(backward["p_value"])


@pytest.mark.parametrize("method", ["exact", "chi2_cc"])
def test_mcnemar_without_discordant_pairs_has_statistic_0_and_p_1(method):
    a, b = _pairs(0, 0, both=30, neither=20)
    test = mcnemar(a, b, method=method)
    assert (test["statistic"], test["p_value"]) == (0.0, 1.0)


def test_mcnemar_exact_statistic_is_the_count_of_first_only_successes():
    assert mcnemar([1], [0])["statistic"] == 1.0 and mcnemar([1], [0])["p_value"] == 1.0
    assert mcnemar(*_pairs(5, 2, both=3))["statistic"] == 5.0


def test_mcnemar_chi2_is_symmetric_in_its_arguments():
    a, b = _pairs(1, 6, both=20, neither=23)
    forward, backward = mcnemar(a, b, method="chi2_cc"), mcnemar(b, a, method="chi2_cc")
    assert forward["statistic"] == backward["statistic"] == pytest.approx(16 / 7, rel=1e-12)  # (|1-6|-1)^2/7


def test_mcnemar_chi2_with_continuity_correction_textbook():
    # Agresti, Categorical Data Analysis: presidential approval, discordant cells 150 and 86.
    a, b = _pairs(150, 86, both=794, neither=570)
    test = mcnemar(a, b, method="chi2_cc")
    assert test["statistic"] == pytest.approx(63 ** 2 / 236, rel=1e-12)  # (|150-86|-1)^2/(150+86)
    assert test["p_value"] == pytest.approx(4.11e-5, rel=1e-2)


def test_mcnemar_rejects_bad_input():
    with pytest.raises(StudyError, match="equal length"):
        mcnemar([1, 0], [1])
    with pytest.raises(StudyError, match="0/1"):
        mcnemar([1, 2], [1, 0])
    with pytest.raises(StudyError, match="valid: exact, chi2_cc"):
        mcnemar([1], [0], method="z")


def test_holm_adjustment_hand_computed():
    # sorted p: 0.01 (x3), 0.02 (x2), 0.04 (x1); running maximum keeps the order.
    assert holm_adjust([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm_adjust([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm_adjust([]) == []


@pytest.mark.parametrize("p_values", [
    [0.04, 0.01, 0.02],
    [0.001, 0.2, 0.03, 0.03, 0.5, 0.0001, 0.049],
    [0.9, 0.8, 0.01],
    [1e-6] * 5,
])
def test_holm_agrees_with_statsmodels(p_values):
    _, expected, _, _ = multipletests(p_values, method="holm")
    assert holm_adjust(p_values) == pytest.approx(list(expected), rel=1e-12)


@pytest.mark.parametrize("successes, n", [(0, 50), (7, 50), (25, 50), (49, 50), (50, 50), (81, 263)])
def test_wilson_agrees_with_statsmodels(successes, n):
    expected = proportion_confint(successes, n, alpha=0.05, method="wilson")
    assert wilson_interval(successes, n) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("only_a, only_b, both, neither", [(1, 6, 20, 23), (0, 5, 40, 5), (9, 2, 30, 9), (3, 3, 44, 0)])
def test_exact_mcnemar_agrees_with_statsmodels(only_a, only_b, both, neither):
    a, b = _pairs(only_a, only_b, both=both, neither=neither)
    table = [[both, only_a], [only_b, neither]]
    assert mcnemar(a, b)["p_value"] == pytest.approx(sm_mcnemar(table, exact=True).pvalue, rel=1e-12)


@pytest.mark.parametrize("both, only_a, only_b, neither", [
    (10, 10, 15, 15),   # AD = BC: phi = 0
    (4, 16, 6, 24),     # AD = BC again, rates 0.40 vs 0.20
    (0, 30, 20, 0),     # no concordant episode at all: AD - BC < 0, phi < 0 ... see below
    (45, 5, 0, 0),      # one run succeeds everywhere (FP at 50/50): a zero margin, phi = 0
    (0, 0, 12, 38),     # one run fails everywhere
])
def test_paired_interval_with_uncorrelated_outcomes_is_newcombes_unpaired_interval(both, only_a, only_b, neither):
    a, b = _pairs(only_a, only_b, both=both, neither=neither)
    n = len(a)
    diff, lo, hi = paired_difference_interval(a, b)
    assert diff == pytest.approx((both + only_a - both - only_b) / n)
    if both * neither == only_a * only_b:
        expected = confint_proportions_2indep(both + only_a, n, both + only_b, n, method="newcomb", compare="diff")
        assert (lo, hi) == pytest.approx(tuple(float(x) for x in expected), abs=1e-12)
    else:  # negative correlation widens the interval beyond the unpaired one
        unpaired = confint_proportions_2indep(both + only_a, n, both + only_b, n, method="newcomb", compare="diff")
        assert lo < float(unpaired[0]) and hi > float(unpaired[1])


def test_paired_interval_ignores_a_correlation_within_newcombes_n_over_2():
    # AD - BC = 2 * 3 - 2 * 2 = 2 > 0 but below n / 2 = 4.5: Newcombe's adjusted numerator is
    # max(2 - 4.5, 0) = 0, so phi = 0 and the interval is the unpaired one
    a, b = _pairs(2, 2, both=2, neither=3)
    expected = confint_proportions_2indep(4, 9, 4, 9, method="newcomb", compare="diff")
    assert paired_difference_interval(a, b)[1:] == pytest.approx(tuple(float(x) for x in expected), abs=1e-12)


def test_paired_interval_hand_computed_with_phi():
    # 44 both, 4 only FP, 0 only quantized, 2 neither (n = 50): rates 0.88 vs 0.96.
    a, b = _pairs(0, 4, both=44, neither=2)
    la, ua = proportion_confint(44, 50, method="wilson")
    lb, ub = proportion_confint(48, 50, method="wilson")
    phi = (44 * 2 - 0 * 4 - 25) / math.sqrt(44 * 6 * 48 * 2)  # Newcombe's n/2 adjustment of AD - BC
    d = 0.88 - 0.96
    lo = d - math.sqrt((0.88 - la) ** 2 - 2 * phi * (0.88 - la) * (ub - 0.96) + (ub - 0.96) ** 2)
    hi = d + math.sqrt((ua - 0.88) ** 2 - 2 * phi * (ua - 0.88) * (0.96 - lb) + (0.96 - lb) ** 2)
    assert paired_difference_interval(a, b) == pytest.approx((d, lo, hi), abs=1e-12)


def test_paired_interval_of_identical_runs_is_symmetric_not_degenerate():
    a = [1] * 49 + [0]
    diff, lo, hi = paired_difference_interval(a, a)
    assert diff == 0 and lo == pytest.approx(-hi) and 0.03 < hi < 0.12
    # A positive correlation narrows the interval compared with independent samples at the same rates.
    unpaired = confint_proportions_2indep(49, 50, 49, 50, method="newcomb", compare="diff")
    assert hi < float(unpaired[1])


def test_paired_interval_rejects_bad_input():
    with pytest.raises(StudyError, match="equal length"):
        paired_difference_interval([1, 0], [1])
    with pytest.raises(StudyError, match="0/1"):
        paired_difference_interval([1, 3], [1, 0])


def test_equivalence_uses_the_90_percent_interval_and_the_margin():
    a = [1] * 49 + [0]
    test = equivalence_test(a, a, margin=0.10)
    assert test["equivalent"] and (test["lo"], test["hi"]) == pytest.approx(paired_difference_interval(a, a, 0.90)[1:])
    assert not equivalence_test(a, a, margin=0.03)["equivalent"]  # the interval is wider than 0.03
    worse, _ = _pairs(0, 6, both=43, neither=1)  # 6 episodes lost: -0.12
    fp = [1] * 49 + [0]
    drop = equivalence_test(worse, fp, margin=0.10)
    assert drop["difference"] == pytest.approx(-0.12) and not drop["equivalent"]
    for margin in (0, 1.0):
        with pytest.raises(StudyError, match="margin"):
            equivalence_test(a, a, margin=margin)
    for alpha in (0, 0.5):
        with pytest.raises(StudyError, match="alpha"):
            equivalence_test(a, a, margin=0.1, alpha=alpha)


@pytest.mark.parametrize("n, alpha, family, expected", [
    (50, 0.05, 1, 6 / 50),    # 2/2^6 = 0.031 < 0.05, 2/2^5 = 0.0625 is not
    (50, 0.05, 24, 10 / 50),  # 2/2^10 = 0.00195 < 0.05/24 = 0.00208, 2/2^9 is not
    (50, 0.01, 1, 8 / 50),
    (4, 0.05, 1, None),       # 4 episodes can never reach p < 0.05 (2/16 = 0.125)
    (6, 0.05, 1, 1.0),        # all 6 episodes one way: 2/2^6 = 0.031
    (1, 0.05, 1, None),
    (50, 0.0625, 1, 6 / 50),  # 2/2^5 equals alpha exactly: p < alpha is needed, so 6 episodes
])
def test_smallest_detectable_difference(n, alpha, family, expected):
    assert smallest_detectable_difference(n, alpha, family) == (expected if expected is None else pytest.approx(expected))
    if expected is not None:
        m = round(expected * n)
        a, b = _pairs(m, 0, neither=n - m)
        assert mcnemar(a, b)["p_value"] < alpha / family
        a, b = _pairs(m - 1, 0, neither=n - m + 1)
        assert mcnemar(a, b)["p_value"] >= alpha / family


@pytest.mark.parametrize("n, family", [(0, 1), (-3, 1), (50, 0)])
def test_smallest_detectable_difference_rejects_bad_input(n, family):
    with pytest.raises(StudyError):
        smallest_detectable_difference(n, 0.05, family)
