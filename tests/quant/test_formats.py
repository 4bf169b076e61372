"""Number formats: FP8 (E4M3, E5M2) and microscaled FP4 (MXFP4, NVFP4) against torch's FP8 casts and
hand-computed values; schemes, quantizers and methods that use them."""

from __future__ import annotations

import pytest
import torch

from wmquant.errors import QuantizationError
from wmquant.quant import QuantConfig, QuantScheme, calibrate_and_quantize, qmath
from wmquant.quant.layers import ActQuantizer, WeightQuantizer
from wmquant.quant.methods import METHODS

from quant_toy import calibration_runner, make_model

D = torch.float64


@pytest.mark.parametrize("fmt, dtype", [(qmath.E4M3, torch.float8_e4m3fn), (qmath.E5M2, torch.float8_e5m2)])
def test_fp8_rounding_equals_torchs_fp8_casts(fmt, dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(50_000, generator=gen) * 200, torch.randn(5_000, generator=gen) * 1e-3,
                   torch.randn(5_000, generator=gen) * 1e-5])
    torch.testing.assert_close(qmath.round_to_float_format(x, fmt), x.to(dtype).float(), rtol=0, atol=0)


@pytest.mark.parametrize("value, expected", [
    (449.0, 448.0),          # above the largest E4M3 value: saturates
    (1e6, 448.0),
    (-1e6, -448.0),
    (464.0, 448.0),          # halfway between 448 and 480 (not representable): to the largest
    (0.0017, 2.0 ** -9),     # subnormal spacing 2^-9 below 2^-6
    (2.0 ** -10, 0.0),       # half the smallest subnormal: ties to even (0)
    (1.0625, 1.0),           # halfway between 1 and 1.125: ties to the even mantissa
    (1.1875, 1.25),
])
def test_e4m3_hand_computed(value, expected):
    assert float(qmath.round_to_float_format(torch.tensor([value], dtype=D), qmath.E4M3)) == expected


def test_e2m1_values_and_ties():
    x = torch.tensor([0.25, 0.3, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, -7.0, -0.6], dtype=D)
    expected = [0.0, 0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, -6.0, -0.5]
    assert qmath.round_to_float_format(x, qmath.E2M1).tolist() == expected


def test_mxfp4_shares_a_power_of_two_scale_per_block_of_32():
    first = torch.full((32,), 1.0, dtype=D)
    first[0], first[1] = 5.0, 2.9  # absmax 5: scale 2^(floor(log2 5) - 2) = 1
    second = torch.full((32,), 1.0, dtype=D)
    second[0], second[1] = 100.0, 30.0  # absmax 100: scale 2^(6 - 2) = 16
    tail = torch.tensor([0.3, -0.9], dtype=D)  # a short last block: absmax 0.9, scale 2^(-1 - 2) = 1/8
    out = qmath.mxfp4_fake_quantize(torch.cat([first, second, tail])[None])[0]
    assert out[:2].tolist() == [4.0, 3.0]             # 5 -> 4 (tie to even), 2.9 -> 3
    assert out[32:34].tolist() == [96.0, 32.0]        # 100 / 16 = 6.25 -> 6 (saturates), 30 / 16 = 1.875 -> 2
    assert out[34].item() == 0.0                      # 1 / 16 = 0.0625 -> 0 in E2M1
    assert out[64:].tolist() == [0.25, -0.75]         # 0.3 * 8 = 2.4 -> 2, 0.9 * 8 = 7.2 -> 6 (saturates)


def test_nvfp4_uses_an_e4m3_block_scale_under_one_tensor_scale():
    x = torch.zeros(32, dtype=D)
    x[0], x[1] = 12.0, 5.0     # block 0: absmax 12
    x[16], x[17] = 3.0, 0.7    # block 1: absmax 3
    g = 12.0 / (448 * 6)       # the tensor scale: absmax / (E4M3 max * E2M1 max)
    s0 = float(qmath.round_to_float_format(torch.tensor(12.0 / (6 * g)), qmath.E4M3)) * g  # 448 * g = 2
    s1 = float(qmath.round_to_float_format(torch.tensor(3.0 / (6 * g)), qmath.E4M3)) * g   # 112 * g = 0.5
    assert (s0, s1) == pytest.approx((2.0, 0.5))
    out = qmath.nvfp4_fake_quantize(x[None])[0]
    assert out[:2].tolist() == pytest.approx([12.0, 4.0])   # 6 * 2, 2.5 -> 2 (tie to even) * 2
    assert out[16:18].tolist() == pytest.approx([3.0, 0.75])  # 6 * 0.5, 1.4 -> 1.5 * 0.5


def test_schemes_check_formats_against_bits_and_groups():
    assert QuantScheme(w_bits=8, a_bits=8, w_format="fp8_e4m3", a_format="fp8_e5m2").w_format == "fp8_e4m3"
    with pytest.raises(QuantizationError, match="w_format=fp8_e4m3 stores 8 bits per value; got w_bits=4"):
        QuantScheme(w_bits=4, w_format="fp8_e4m3")
    with pytest.raises(QuantizationError, match="own scaling blocks; w_group_size must be null"):
        QuantScheme(w_bits=4, w_format="mxfp4", w_group_size=32)
    with pytest.raises(QuantizationError, match="valid: int, fp8_e4m3, fp8_e5m2, mxfp4, nvfp4"):
        QuantScheme(w_bits=8, w_format="fp8")


def test_weight_quantizer_in_fp8_has_one_scale_per_row():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(6, 20, generator=gen, dtype=D)
    quantizer = WeightQuantizer(QuantScheme(w_bits=8, w_format="fp8_e4m3"))
    scale = w.abs().amax(dim=1, keepdim=True) / 448
    torch.testing.assert_close(quantizer(w), (w / scale).to(torch.float8_e4m3fn).double() * scale)
    assert quantizer.storage_bits(w) == 8 * 120 + 16 * 6
    mx = WeightQuantizer(QuantScheme(w_bits=4, w_format="mxfp4"))
    assert mx.storage_bits(w) == 4 * 120 + 8 * 6  # one E8M0 scale per row's block of 32 (20 inputs)


def test_activation_quantizers_in_fp8_per_token_and_static():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, 16, generator=gen, dtype=D)
    dynamic = ActQuantizer(8, granularity="per_token", number_format="fp8_e4m3")
    scale = x.abs().amax(dim=-1, keepdim=True) / 448
    torch.testing.assert_close(dynamic(x), (x / scale).to(torch.float8_e4m3fn).double() * scale)
    static = ActQuantizer(8, granularity="per_tensor", number_format="fp8_e4m3")
    static.set_mode("observe")
    static(x)
    static(3 * x)  # not a power of 2: the format's rounding does not commute with the scale
    static.freeze()
    static.set_mode("quant")
    scale = (3 * x).abs().amax() / 448  # the calibrated range's absmax
    torch.testing.assert_close(static(x), (x / scale).to(torch.float8_e4m3fn).double() * scale)


def test_rtn_runs_formats_and_grid_searching_methods_refuse_them():
    model = make_model(dtype=D)
    config = QuantConfig.uniform(w_bits=4, a_bits=4, w_format="nvfp4", a_format="nvfp4", a_granularity="per_token")
    report = calibrate_and_quantize(model, "rtn", config, calibration_runner(model))
    assert report["summary"]["encoder"]["avg_bits_quantized_weights"] > 4
    with pytest.raises(QuantizationError, match="method 'awq' searches integer grids"):
        calibrate_and_quantize(make_model(dtype=D), "awq", QuantConfig.uniform(w_bits=4, w_format="mxfp4"),
                               calibration_runner(model))


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_microscaled_blocks_lie_within_each_row_of_a_batched_tensor(fmt):
    # (batch, tokens, channels) activations with 40 channels: blocks never cross a row, and the last
    # block of each row is short (8 of 32, or 8 of 16)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 40, generator=gen, dtype=D) * torch.tensor([1.0, 30.0, 0.01], dtype=D)[None, :, None]
    if fmt == "mxfp4":
        out = qmath.mxfp4_fake_quantize(x)
        rows = [qmath.mxfp4_fake_quantize(row[None])[0] for row in x.reshape(-1, 40)]
    else:
        tensor_absmax = x.abs().amax()
        out = qmath.nvfp4_fake_quantize(x)
        rows = [qmath.nvfp4_fake_quantize(row[None], tensor_absmax)[0] for row in x.reshape(-1, 40)]
    assert out.shape == x.shape
    assert torch.equal(out.reshape(-1, 40), torch.stack(rows))
    # each row's own scale: the small rows are not flushed to zero by the large ones
    assert (out[:, 2] != 0).any()


def test_float_format_storage_bits_count_each_block():
    # 6 rows of 40 inputs: FP8 one 16-bit scale per row; MXFP4 2 blocks of 32 per row, an 8-bit E8M0
    # each; NVFP4 3 blocks of 16 per row, an 8-bit E4M3 each, plus one 32-bit tensor scale
    assert qmath.format_storage_bits(6, 40, "fp8_e4m3") == 8 * 240 + 16 * 6
    assert qmath.format_storage_bits(6, 40, "mxfp4") == 4 * 240 + 8 * 6 * 2
    assert qmath.format_storage_bits(6, 40, "nvfp4") == 4 * 240 + 8 * 6 * 3 + 32


def test_format_dispatch_runs_the_named_format():
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(4, 48, generator=gen, dtype=D) * torch.logspace(-2, 1, 48, dtype=D)
    results = {name: qmath.format_fake_quantize_weight(w, name) for name in ("fp8_e4m3", "fp8_e5m2", "mxfp4", "nvfp4")}
    assert torch.equal(results["mxfp4"], qmath.mxfp4_fake_quantize(w))
    assert torch.equal(results["nvfp4"], qmath.nvfp4_fake_quantize(w))
    assert torch.equal(results["fp8_e5m2"], qmath.fp8_fake_quantize(w, "fp8_e5m2", w.abs().amax(dim=1, keepdim=True)))
    names = list(results)
    assert all(not torch.equal(results[a], results[b]) for i, a in enumerate(names) for b in names[i + 1:])
    x = w[None]
    assert torch.equal(qmath.format_fake_quantize_activation(x, "mxfp4", per_token=True), qmath.mxfp4_fake_quantize(x))
    static = torch.tensor(3 * x.abs().max().item(), dtype=D)  # not a power of 2: block scales round differently
    assert torch.equal(qmath.format_fake_quantize_activation(x, "nvfp4", per_token=False, absmax=static),
                       qmath.nvfp4_fake_quantize(x, static))
    assert torch.equal(qmath.format_fake_quantize_activation(x, "nvfp4", per_token=True, absmax=static),
                       qmath.nvfp4_fake_quantize(x))
    assert not torch.equal(qmath.nvfp4_fake_quantize(x, static), qmath.nvfp4_fake_quantize(x))
    # FP8 per tensor without a calibrated range: the tensor's own absmax
    assert torch.equal(qmath.format_fake_quantize_activation(x, "fp8_e4m3", per_token=False),
                       qmath.fp8_fake_quantize(x, "fp8_e4m3", x.abs().amax()))
    for bad in ("int", "fp4"):
        with pytest.raises(QuantizationError, match="is not a float format"):
            qmath.format_fake_quantize_weight(w, bad)


def test_every_method_that_searches_integer_grids_refuses_float_formats():
    integer_only = sorted(name for name, cls in METHODS.items() if not cls.supports_float_formats)
    assert {"awq", "gptq", "omse", "omniquant"} <= set(integer_only)
    for name in integer_only:
        model = make_model(dtype=D)
        with pytest.raises(QuantizationError, match=f"method '{name}' searches integer grids"):
            calibrate_and_quantize(model, name, QuantConfig.uniform(w_bits=4, w_format="mxfp4"), calibration_runner(model))
