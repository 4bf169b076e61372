"""Quantizer arithmetic against values computed by hand, plus invariants."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wmquant.errors import ConfigError, QuantizationError
from wmquant.quant import qmath
from wmquant.quant.config import QuantScheme

D = torch.float64


def t(values):
    return torch.tensor(values, dtype=D)


# ---------------------------------------------------------------- symmetric (weights)


@pytest.mark.parametrize(
    "bits, row, expected",
    [
        # absmax 127 -> scale 1; half-to-even: 2.5 -> 2, 3.5 -> 4, -0.5 -> -0
        (8, [127.0, -127.0, 2.5, 3.5, -0.5, 100.4], [127.0, -127.0, 2.0, 4.0, 0.0, 100.0]),
        # absmax 7 -> scale 1 at 4 bits; q in [-8, 7]
        (4, [7.0, -7.0, 2.5, 1.5, -0.5, 3.5], [7.0, -7.0, 2.0, 2.0, 0.0, 4.0]),
        # absmax 3 -> scale 1 at 3 bits
        (3, [3.0, -3.0, 0.5, 1.5, -2.5, 2.6], [3.0, -3.0, 0.0, 2.0, -2.0, 3.0]),
    ],
)
def test_symmetric_per_channel_by_hand(bits, row, expected):
    w = t([row, [2 * v for v in row]])  # second row: absmax doubles, so its scale doubles
    scale, zero = qmath.weight_qparams(w, bits, None, symmetric=True)
    absmax = max(abs(v) for v in row)
    assert scale[:, 0].tolist() == [absmax / (2 ** (bits - 1) - 1), 2 * absmax / (2 ** (bits - 1) - 1)]
    assert zero.abs().sum() == 0
    deq = qmath.fake_quantize_weight(w, bits, None, symmetric=True)
    assert deq[0].tolist() == expected
    assert deq[1].tolist() == [2 * v for v in expected]


def test_symmetric_extremes_are_representable_and_quantwm_scale_clips_them():
    w = t([[0.7, -0.7, 0.1]])
    assert qmath.fake_quantize_weight(w, 4, None)[0, :2].tolist() == pytest.approx([0.7, -0.7], abs=1e-15)
    # QuantWM's (2^b - 1)/2 denominator: +absmax lands on 7 * 0.7/7.5 = 0.933 * absmax and
    # -absmax (-7.5 rounds half-to-even to -8) on -1.067 * absmax (spec 1.3)
    quantwm = qmath.fake_quantize_weight(w, 4, None, quantwm_scale=True)
    assert quantwm[0, 0].item() == pytest.approx(7 * 0.7 / 7.5)
    assert quantwm[0, 1].item() == pytest.approx(-8 * 0.7 / 7.5)


def test_integer_codes_and_ranges():
    assert qmath.qrange(8, True) == (-128, 127)
    assert qmath.qrange(4, True) == (-8, 7)
    assert qmath.qrange(3, False) == (0, 7)
    q = qmath.quantize(t([-100.0, 100.0]), t(1.0), t(0.0), 4, True)
    assert q.tolist() == [-8.0, 7.0]


# ---------------------------------------------------------------- asymmetric (activations)


@pytest.mark.parametrize(
    "bits, low, high, x, expected",
    [
        # scale (204 + 51) / 255 = 1, zero point 51
        (8, -51.0, 204.0, [0.5, -0.5, 100.5, 204.0, -51.0, 300.0], [0.0, 0.0, 100.0, 204.0, -51.0, 204.0]),
        # scale 15 / 15 = 1, zero point 5; out-of-range values clamp to the grid ends
        (4, -5.0, 10.0, [-5.0, 10.0, 0.5, 1.5, -2.5, 12.0, -7.0], [-5.0, 10.0, 0.0, 2.0, -2.0, 10.0, -5.0]),
        # scale 7 / 7 = 1, zero point 2
        (3, -2.0, 5.0, [-2.0, 5.0, 2.5, -1.5, 0.0], [-2.0, 5.0, 2.0, -2.0, 0.0]),
    ],
)
def test_asymmetric_by_hand(bits, low, high, x, expected):
    scale, zero = qmath.qparams_from_range(t(low), t(high), bits, symmetric=False)
    assert scale.item() == 1.0
    assert zero.item() == -low
    assert qmath.fake_quantize(t(x), scale, zero, bits, False).tolist() == expected


def test_asymmetric_range_is_widened_to_contain_zero():
    scale, zero = qmath.qparams_from_range(t(2.0), t(9.0), 4, symmetric=False)
    assert scale.item() == pytest.approx(9 / 15)
    assert zero.item() == 0
    assert qmath.fake_quantize(t([0.0, 9.0]), scale, zero, 4, False).tolist() == pytest.approx([0.0, 9.0])


@settings(max_examples=60, deadline=None)
@given(st.floats(-50, 50), st.floats(0.001, 100), st.sampled_from([2, 3, 4, 6, 8]), st.booleans())
def test_zero_is_exactly_representable(low, width, bits, symmetric):
    scale, zero = qmath.qparams_from_range(t(low), t(low + width), bits, symmetric)
    assert qmath.fake_quantize(t([0.0]), scale, zero, bits, symmetric).item() == 0.0
    assert 0 <= zero.item() <= 2**bits - 1


def test_scale_never_below_eps():
    scale, _ = qmath.weight_qparams(torch.zeros(2, 4, dtype=D), 4, None)
    assert (scale >= qmath.SCALE_EPS).all()
    assert qmath.fake_quantize_weight(torch.zeros(2, 4, dtype=D), 4, None).abs().sum() == 0


# ---------------------------------------------------------------- granularity


def test_group_layout_with_short_last_group():
    assert qmath.group_sizes(404, 128) == [128, 128, 128, 20]
    assert qmath.num_groups(404, 128) == 4
    assert qmath.group_sizes(384, 128) == [128, 128, 128]
    assert qmath.group_sizes(100, None) == [100]
    assert qmath.group_sizes(100, 500) == [100]


def test_per_group_scales_by_hand_never_straddle_rows():
    out_features, in_features, g = 3, 404, 128
    w = torch.zeros(out_features, in_features, dtype=D)
    starts = [0, 128, 256, 384]
    for row in range(out_features):
        for k, start in enumerate(starts):
            w[row, start] = (row + 1) * (k + 1) * 7.0  # group absmax (row+1)(k+1)*7
    w[0, 384] = 0.7  # row 0's short last group (20 weights): its own absmax 0.7 -> scale 0.1
    w[0, 403] = -0.7
    w[1, 0] = 1000.0  # a huge first weight in row 1 must not leak into row 0's last group
    scale, _ = qmath.weight_qparams(w, 4, g)
    assert scale.shape == (3, 4)
    assert scale[0].tolist() == pytest.approx([1.0, 2.0, 3.0, 0.1], rel=1e-15)
    assert scale[1, 0].item() == pytest.approx(1000.0 / 7)
    assert scale[2].tolist() == [3.0, 6.0, 9.0, 12.0]
    deq = qmath.fake_quantize_weight(w, 4, g)
    assert deq[0, 384].item() == pytest.approx(0.7) and deq[0, 403].item() == pytest.approx(-0.7)


def test_per_group_matches_per_channel_on_each_slice():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5, 404, generator=gen, dtype=D)
    grouped = qmath.fake_quantize_weight(w, 3, 128)
    start = 0
    for size in qmath.group_sizes(404, 128):
        piece = w[:, start:start + size]
        assert torch.equal(grouped[:, start:start + size], qmath.fake_quantize_weight(piece, 3, None))
        start += size


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 70), st.one_of(st.none(), st.integers(1, 40)))
def test_to_groups_round_trip(rows, cols, group_size):
    w = torch.randn(rows, cols, dtype=D)
    groups = qmath.to_groups(w, group_size)
    assert groups.shape == (rows, qmath.num_groups(cols, group_size), qmath.effective_group_size(cols, group_size))
    assert torch.equal(qmath.from_groups(groups, cols), w)


def test_per_token_by_hand():
    x = t([[[-5.0, 0.0, 2.5, 10.0], [0.0, 1.0, 3.0, 15.0]], [[1.5, 3.0, 7.5, 15.0], [-1.0, -1.0, -1.0, -1.0]]])
    out = qmath.per_token_fake_quantize(x, 4, symmetric=False)
    assert out[0, 0].tolist() == [-5.0, 0.0, 2.0, 10.0]  # scale 1, zero point 5
    assert out[0, 1].tolist() == [0.0, 1.0, 3.0, 15.0]  # scale 1, zero point 0
    assert out[1, 0].tolist() == [2.0, 3.0, 8.0, 15.0]  # widened to [0, 15]: scale 1, 7.5 -> 8
    assert out[1, 1].tolist() == pytest.approx([-1.0] * 4)  # range [-1, 0]


def test_per_token_8bit_and_3bit_symmetric():
    x = t([[-127.0, 3.5, 0.0, 64.0]])
    assert qmath.per_token_fake_quantize(x, 8, symmetric=True).tolist() == [[-127.0, 4.0, 0.0, 64.0]]
    x3 = t([[3.0, -1.5, 0.4]])
    assert qmath.per_token_fake_quantize(x3, 3, symmetric=True).tolist() == [[3.0, -2.0, 0.0]]


def test_sixteen_bits_is_identity():
    x = torch.randn(4, 6, dtype=D)
    assert qmath.fake_quantize_weight(x, 16, None) is x
    assert qmath.fake_quantize_weight(x, 16, 2) is x
    assert qmath.per_token_fake_quantize(x, 16) is x
    assert qmath.fake_quantize(x, t(0.1), t(0.0), 16, True) is x


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("bits", [0, 1, 9, 12, 32, 4.0, True, "8", None])
def test_bad_bits_raise(bits):
    with pytest.raises(QuantizationError):
        qmath.check_bits(bits)
    with pytest.raises(ConfigError):
        QuantScheme(w_bits=bits)
    with pytest.raises(QuantizationError):
        QuantScheme(a_bits=bits)


@pytest.mark.parametrize("group", [0, -1, 2.5, True, "128"])
def test_bad_group_size_raises(group):
    with pytest.raises(QuantizationError):
        qmath.check_group_size(group)
    with pytest.raises(ConfigError, match="group"):
        QuantScheme(w_bits=4, w_group_size=group)


def test_valid_bits_accepted():
    for bits in (2, 3, 4, 5, 6, 7, 8, 16):
        assert qmath.check_bits(bits) == bits


# ---------------------------------------------------------------- STE, searches, accounting


def test_straight_through_rounding_gradient_is_identity():
    x = torch.tensor([0.2, 1.7, -2.5], dtype=D, requires_grad=True)
    qmath.round_half_even(x, ste=True).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]


def test_weight_clip_search_never_worse_than_minmax_per_group():
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(6, 50, generator=gen, dtype=D) * torch.rand(6, 50, generator=gen, dtype=D).pow(4) * 3
    ratios = qmath.search_weight_clip_ratios(w, 3, 16)
    grid = qmath.clip_ratio_grid()
    assert ratios.shape == (6, 4)
    assert all(any(abs(r - g) < 1e-12 for g in grid.tolist()) for r in ratios.flatten().tolist())
    searched = qmath.to_groups(qmath.fake_quantize_weight(w, 3, 16, clip_max=ratios, clip_min=ratios) - w, 16)
    minmax = qmath.to_groups(qmath.fake_quantize_weight(w, 3, 16) - w, 16)
    assert (searched.pow(2).sum(-1) <= minmax.pow(2).sum(-1) + 1e-12).all()
    assert (searched.pow(2).sum() < minmax.pow(2).sum())  # heavy tails: clipping must help somewhere


def test_activation_range_search_never_worse_than_minmax():
    gen = torch.Generator().manual_seed(4)
    sample = torch.randn(4000, generator=gen, dtype=D)
    sample[0] = 40.0  # one outlier
    low, high = sample.min(), sample.max()
    searched = qmath.search_activation_range(sample, low, high, 4)
    minmax = qmath.qparams_from_range(low, high, 4, False)
    err = lambda qp: (qmath.fake_quantize(sample, *qp, 4, False) - sample).pow(2).mean()  # noqa: E731
    assert err(searched) < err(minmax)


def test_the_activation_shrink_factor_is_the_searched_range():
    gen = torch.Generator().manual_seed(4)
    sample = torch.randn(4000, generator=gen, dtype=D)
    sample[0] = 40.0
    low, high = sample.min(), sample.max()
    factor = qmath.search_activation_shrink(sample, low, high, 4)
    assert 0.11 <= factor < 0.5  # one far outlier: most of the range is given up
    searched = qmath.search_activation_range(sample, low, high, 4)
    assert all(torch.equal(a, b) for a, b in zip(searched, qmath.qparams_from_range(low * factor, high * factor, 4, False)))
    # a sample that lies on its minmax grid keeps the whole range
    even = torch.arange(-8, 8, dtype=D) / 8
    assert qmath.search_activation_shrink(even, even.min(), even.max(), 4) == 1.0


def _reference_clip_ratios(w, bits, group, grid):
    """Per (row, group): the first grid ratio (ascending) of least squared error, written directly
    from the definition; also whether any group's least error is shared by several ratios."""
    rows, cols = w.shape
    qmax = 2 ** (bits - 1) - 1
    chosen, tie_seen = [], False
    for r in range(rows):
        row_choice = []
        for start in range(0, cols, group):
            piece = w[r, start:start + group]
            errors = []
            for ratio in grid:
                absmax = max(-min(piece.min().item() * ratio, 0.0), max(piece.max().item() * ratio, 0.0))
                scale = max(absmax / qmax, qmath.SCALE_EPS)
                deq = torch.clamp(torch.round(piece / scale), -qmax - 1, qmax) * scale
                errors.append((deq - piece).pow(2).sum().item())
            least = min(errors)
            tie_seen |= errors.count(least) > 1
            row_choice.append(grid[errors.index(least)])
        chosen.append(row_choice)
    return torch.tensor(chosen, dtype=D), tie_seen


def test_weight_clip_search_is_the_first_least_error_ratio_of_each_group():
    gen = torch.Generator().manual_seed(11)
    # coarse values (few distinct levels) make several ratios quantize a group identically: ties
    w = torch.randint(-6, 7, (5, 24), generator=gen).to(D) / 2
    w[:, 0] = 9.0  # one outlier per row, so that clipping pays in some groups
    w[1, 8:16] = 0.0  # an all-zero group (pruned weights): every ratio is exact, a tie
    grid = qmath.clip_ratio_grid(0.35, 1.0, 27)
    expected, tie_seen = _reference_clip_ratios(w, 3, 8, grid.tolist())
    assert tie_seen, "the data must hold a tie, or the tie rule is not tested"
    assert torch.equal(qmath.search_weight_clip_ratios(w, 3, 8, ratios=grid), expected)


def _reference_shrink(sample, low, high, bits, shrinks):
    """Factor 1 first, then each shrink; the first of least MSE wins (asymmetric, range widened to 0)."""
    qmax = 2**bits - 1
    errors = []
    for factor in [1.0, *shrinks]:
        lo, hi = min(low * factor, 0.0), max(high * factor, 0.0)
        scale = max((hi - lo) / qmax, qmath.SCALE_EPS)
        zero = min(max(round(-lo / scale), 0), qmax)  # Python's round is half to even too
        deq = (torch.clamp(torch.round(sample / scale) + zero, 0, qmax) - zero) * scale
        errors.append((deq - sample).pow(2).mean().item())
    least = min(errors)
    return [1.0, *shrinks][errors.index(least)], errors.count(least) > 1


@pytest.mark.parametrize("shrinks", [None, [0.9, 0.8, 0.7]], ids=["default-grid", "grid-without-1"])
def test_activation_shrink_is_the_first_least_error_factor(shrinks):
    gen = torch.Generator().manual_seed(5)
    # negative and positive values with an outlier on the negative side: both ends of the range shrink
    sample = torch.randn(3000, generator=gen, dtype=D) + 0.5
    sample[0] = -25.0
    low, high = sample.min().item(), sample.max().item()
    grid = qmath.shrink_grid() if shrinks is None else torch.tensor(shrinks, dtype=D)
    expected, _ = _reference_shrink(sample, low, high, 4, grid.tolist())
    assert qmath.search_activation_shrink(sample, sample.min(), sample.max(), 4, shrinks=grid) == expected
    assert expected != 1.0


def test_activation_shrink_keeps_minmax_when_no_candidate_is_strictly_better():
    # a sample on its own 2-bit minmax grid: factor 1 is exact, every shrink is worse, and a grid that
    # leaves out 1 still cannot replace it
    on_grid = torch.tensor([-1.0, 0.0, 1.0, 2.0] * 4, dtype=D)
    assert qmath.search_activation_shrink(on_grid, on_grid.min(), on_grid.max(), 2,
                                          shrinks=torch.tensor([0.99, 0.9], dtype=D)) == 1.0
    # ties: a tensor of zeros (a dead channel) is exact at every factor; the first one, 1, is kept
    zeros = torch.zeros(64, dtype=D)
    expected, tie = _reference_shrink(zeros, 0.0, 0.0, 3, qmath.shrink_grid().tolist())
    assert tie and expected == 1.0
    assert qmath.search_activation_shrink(zeros, zeros.min(), zeros.max(), 3) == 1.0


def test_given_scale_and_zero_point_are_used_as_given():
    w = t([[-1.5, 1.0, 2.0, 7.0], [-1.0, -0.5, 0.5, 1.0]])
    scale = t([[0.5], [0.25]])
    zero = t([[2.0], [8.0]])
    # asymmetric 4 bits: q = clamp(round(w / s) + z, 0, 15), w_hat = (q - z) s; row 0 clips at both
    # ends (-1.5 / 0.5 + 2 = -1 -> 0, 7 / 0.5 + 2 = 16 -> 15), row 1 fits
    expected = t([[-1.0, 1.0, 2.0, 6.5], [-1.0, -0.5, 0.5, 1.0]])
    assert torch.equal(qmath.fake_quantize_weight(w, 4, None, symmetric=False, scale=scale, zero_point=zero), expected)
    # a scale without a zero point means zero point 0 (symmetric codes)
    sym = qmath.fake_quantize_weight(t([[0.3, -0.74]]), 4, None, scale=t([[0.25]]))
    assert sym.tolist() == [[0.25, -0.75]]


@pytest.mark.parametrize("start, stop, steps", [(0.0, 1.0, 5), (0.5, 1.2, 5), (0.8, 0.5, 5), (0.5, 1.0, 0)])
def test_invalid_clip_ratio_grid_is_refused(start, stop, steps):
    with pytest.raises(QuantizationError, match="clip ratio grid"):
        qmath.clip_ratio_grid(start, stop, steps)


def test_single_step_clip_ratio_grid_and_unit_group_are_valid():
    assert qmath.clip_ratio_grid(1.0, 1.0, 1).tolist() == [1.0]
    assert qmath.check_group_size(1) == 1


def test_per_tensor_fake_quantize_uses_the_tensors_own_range():
    x = t([-1.0, 0.0, 0.6, 2.0])
    # asymmetric 2 bits over [-1, 2]: scale 1, zero point 1; 0.6 -> 1
    assert qmath.per_tensor_fake_quantize(x, 2).tolist() == [-1.0, 0.0, 1.0, 2.0]
    # symmetric 3 bits: absmax 2 -> scale 2/3; -1 -> round(-1.5) = -2 (half to even); 0.6 -> round(0.9) = 1
    assert qmath.per_tensor_fake_quantize(x, 3, symmetric=True).tolist() == pytest.approx([-4 / 3, 0.0, 2 / 3, 2.0], abs=1e-15)
    assert qmath.per_tensor_fake_quantize(x, 16) is x


def test_storage_bits_definition():
    assert qmath.weight_storage_bits(8, 404, 4, 128, True) == 4 * 8 * 404 + 16 * 8 * 4
    assert qmath.weight_storage_bits(8, 404, 4, 128, False) == 4 * 8 * 404 + 32 * 8 * 4
    assert qmath.weight_storage_bits(8, 404, 8, None, True) == 8 * 8 * 404 + 16 * 8
    assert qmath.weight_storage_bits(8, 404, 16, None, True) == 32 * 8 * 404
    assert qmath.average_bits_per_weight([(10, 40), (10, 320)]) == 18.0
    assert math.isnan(qmath.average_bits_per_weight([]))


def test_check_finite():
    qmath.check_finite("w", torch.ones(3))
    with pytest.raises(QuantizationError, match="NaN"):
        qmath.check_finite("w", torch.tensor([1.0, float("inf")]))


def test_straight_through_rounding_forward_is_exact():
    x = torch.randn(10000, dtype=torch.float32) * 300
    assert torch.equal(qmath.round_half_even(x, ste=True), torch.round(x))


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [4, 8])
def test_fake_quantization_without_gradients_equals_the_straight_through_path(bits, symmetric):
    """Planning runs under no_grad take the plain round and one aminmax pass; the values must be
    those of the straight-through path, bit for bit (signed zeros included)."""
    x = torch.randn(64, 200, 84) * 3
    x[0, 0, :8] = torch.tensor([0.0, -0.0, 0.3, -0.3, 1e-8, -1e-8, 2.5, -2.5])
    leaf = x.clone().requires_grad_(True)
    with_grad = qmath.per_token_fake_quantize(leaf, bits, symmetric, ste=True)
    with torch.no_grad():
        without = qmath.per_token_fake_quantize(x, bits, symmetric, ste=True)
    assert torch.equal(with_grad.detach(), without)
    assert torch.equal(torch.signbit(with_grad.detach()), torch.signbit(without))
    scale, zero = qmath.qparams_from_range(x.amin(), x.amax(), bits, symmetric)
    with_grad = qmath.fake_quantize(leaf, scale, zero, bits, symmetric, ste=True)
    with torch.no_grad():
        without = qmath.fake_quantize(x, scale, zero, bits, symmetric, ste=True)
    assert torch.equal(with_grad.detach(), without)
    assert torch.equal(torch.signbit(with_grad.detach()), torch.signbit(without))
