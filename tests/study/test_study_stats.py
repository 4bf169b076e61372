"""Wilson intervals and McNemar's test against published and hand-computed values."""

import math

import pytest

from wmquant.errors import StudyError
from wmquant.study.stats import holm_adjust, mcnemar, wilson_interval


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


def test_wilson_boundaries_and_confidence():
    assert wilson_interval(0, 50)[0] == 0.0
    assert wilson_interval(50, 50)[1] == 1.0
    lo95, hi95 = wilson_interval(47, 50)
    lo99, hi99 = wilson_interval(47, 50, confidence=0.99)
    assert lo99 < lo95 < 47 / 50 < hi95 < hi99
    # Symmetry: k successes mirror n - k successes.
    lo, hi = wilson_interval(12, 50)
    assert wilson_interval(38, 50) == pytest.approx((1 - hi, 1 - lo), abs=1e-12)


@pytest.mark.parametrize("args", [(1, 0), (-1, 10), (11, 10), (1.5, 10), (1, 10, 1.0)])
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
