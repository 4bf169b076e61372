"""The fused INT8 kernels (wmquant.kernels.fused_int8) against their definitions.

On CUDA they run compiled; without it, in Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1). The definitions are qmath's quantization and Int8Linear's torch path.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wmquant.errors import ConfigError
from wmquant.kernels import fused_int8
from wmquant.kernels.int8 import Int8Linear, int8_matmul, quantize_rows
from wmquant.kernels.real import (apply_engine_backend_, check_int8_kernel, fuse_int8_neighbours_, real_weight_bytes,
                                  set_int8_kernel_, to_real_backend_)
from wmquant.models.checkpoint import load_world_model
from wmquant.quant import QuantConfig, qmath, quantize_

from kernel_toy import wall_inputs

pytestmark = [
    pytest.mark.skipif(not fused_int8.available(), reason="needs Triton"),
    pytest.mark.skipif(not (torch.cuda.is_available() or fused_int8.interpreting()),
                       reason="needs CUDA or Triton's interpreter (TRITON_INTERPRET=1)"),
]

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _rows(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=gen) * 3
    x[:, :3] *= 10  # outlier channels
    x[0] = x[0].abs() + 0.5  # an all-positive token: its range must still be widened to contain 0
    return x.to(DEVICE)


def _cuda_scale(low: torch.Tensor, high: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    """qmath.qparams_from_range's scale with `range / qmax` as a product with the fp32 reciprocal,
    as torch computes it on CUDA."""
    qmin, qmax = qmath.qrange(bits, symmetric)
    low, high = low.clamp(max=0), high.clamp(min=0)
    spread = torch.maximum(-low, high) if symmetric else high - low
    return (spread * float(np.float32(1.0) / np.float32(qmax))).clamp(min=qmath.SCALE_EPS)


# --- quantizing rows ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bits,symmetric", [(8, False), (8, True), (4, False), (6, True)])
def test_per_token_codes_are_qmaths_for_the_rows_own_range(bits, symmetric):
    x = _rows(37, 84)
    codes, scale, zero = fused_int8.rows_to_int8(x, bits, symmetric, padded_cols=88)
    assert codes.dtype == torch.int8 and codes.shape == (37, 88)
    assert torch.equal(codes[:, 84:], torch.zeros(37, 4, dtype=torch.int8, device=DEVICE))  # the aligned padding
    expected_scale = _cuda_scale(x.amin(1, keepdim=True), x.amax(1, keepdim=True), bits, symmetric)
    assert torch.equal(scale, expected_scale)
    reference_scale, reference_zero = qmath.qparams_from_range(x.amin(1, keepdim=True), x.amax(1, keepdim=True),
                                                               bits, symmetric)
    assert torch.allclose(scale, reference_scale, rtol=2e-7, atol=0)  # one float32 rounding apart at most
    shift = 0 if symmetric else 2 ** (bits - 1)
    own_zero = qmath.qparams_from_range(x.amin(1, keepdim=True), x.amax(1, keepdim=True), bits, symmetric)[1]
    if not symmetric:  # the zero point from the kernel's scale, by qmath's definition
        own_zero = torch.round(-x.amin(1, keepdim=True).clamp(max=0) / scale).clamp(*qmath.qrange(bits, False))
    assert torch.equal(zero, own_zero - shift)
    expected = qmath.quantize(x, scale, own_zero, bits, symmetric) - shift
    assert torch.equal(codes[:, :84].float(), expected)
    if bits == 8:  # and they are exactly Int8Linear's torch-path codes wherever the scales agree
        torch_codes, _, _ = quantize_rows(x, bits, symmetric)
        same_scale = (scale == reference_scale).squeeze(1)
        assert same_scale.any() and torch.equal(codes[same_scale, :84], torch_codes[same_scale])
        assert torch.equal(zero[same_scale], reference_zero[same_scale] - shift)


def test_static_codes_round_half_to_even_and_clamp():
    # scale 0.5: x = k / 4 lies exactly halfway between codes for odd k
    x = (torch.arange(-600, 600, dtype=torch.float32) / 4).reshape(24, 50).to(DEVICE)
    scale, zero = torch.tensor(0.5, device=DEVICE), torch.tensor(100.0, device=DEVICE)
    codes, row_scale, row_zero = fused_int8.rows_to_int8(x, 8, False, 56, scale, zero)
    expected = qmath.quantize(x, scale, zero, 8, False) - 128  # torch.round: half to even
    assert torch.equal(codes[:, :50].float(), expected)
    assert (expected == -128).any() and (expected == 127).any()  # both clamps are exercised
    assert torch.equal(row_scale, torch.full((24, 1), 0.5, device=DEVICE))
    assert torch.equal(row_zero, torch.full((24, 1), 100.0 - 128, device=DEVICE))


@pytest.mark.parametrize("symmetric", [False, True])
def test_fused_layernorm_then_quantize_matches_the_modules(symmetric):
    x = _rows(64, 84, seed=1) + 2.0
    norm = nn.LayerNorm(84, eps=1e-6).to(DEVICE)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(84, generator=torch.Generator().manual_seed(2)))
        norm.bias.copy_(torch.randn(84, generator=torch.Generator().manual_seed(3)))
        normed = norm(x)
    fused = fused_int8.FusedNorm(norm.weight.detach(), norm.bias.detach(), norm.eps)
    codes, scale, zero = fused_int8.rows_to_int8(x, 8, symmetric, 88, norm=fused)
    reference_codes, reference_scale, reference_zero = quantize_rows(normed, 8, symmetric)
    # the row sums run in another order than torch's LayerNorm: float32 rounding, so at most a
    # neighbouring code, and rarely
    difference = (codes[:, :84].int() - reference_codes.int()).abs()
    assert difference.max() <= 1 and difference.float().mean() < 0.01
    assert torch.allclose(scale, reference_scale, rtol=1e-5, atol=0)
    assert (zero - reference_zero).abs().max() <= 1
    without_norm, _, _ = fused_int8.rows_to_int8(x, 8, symmetric, 88)
    assert (without_norm.int() - codes.int()).abs().max() > 10  # the norm really ran


def test_rows_wider_than_a_program_are_refused():
    with pytest.raises(ConfigError, match="wider than"):
        fused_int8.rows_to_int8(torch.zeros(2, fused_int8.MAX_ROW_COLS + 1, device=DEVICE), 8, True, 8200)


# --- the GEMM and its epilogue --------------------------------------------------------------------------

def _layer_tensors(out_features: int = 100, padded_out: int = 104, padded_in: int = 88, in_features: int = 84):
    gen = torch.Generator().manual_seed(5)
    weight = torch.randint(-127, 128, (padded_out, padded_in), dtype=torch.int8, generator=gen)
    weight[out_features:] = 0
    weight[:, in_features:] = 0
    weight_scale = torch.rand(padded_out, generator=gen) * 0.01
    bias = torch.randn(padded_out, generator=gen)
    row_sum = weight.sum(dim=1, dtype=torch.int32).float()
    return [t.to(DEVICE) for t in (weight, weight_scale, row_sum, bias)]


@pytest.mark.parametrize("symmetric,with_bias", [(False, True), (True, True), (False, False)])
def test_gemm_epilogue_is_int8_linears_torch_path(symmetric, with_bias):
    # several tiles along every axis, and a remainder in each (the interpreter's tiles are 128 wide)
    rows, in_features, out_features = 300, 300, 260
    weight, weight_scale, row_sum, bias = _layer_tensors(out_features, 264, 304, in_features)
    codes, scale, zero = fused_int8.rows_to_int8(_rows(rows, in_features, seed=4), 8, symmetric, 304)
    out = fused_int8.int8_gemm(codes, scale, zero, weight, weight_scale, row_sum, bias if with_bias else None,
                               out_features, torch.float32, asymmetric=not symmetric)
    # Int8Linear.forward's torch path, operation for operation
    expected = int8_matmul(codes.cpu(), weight.cpu()).to(DEVICE) * scale
    if not symmetric:
        expected = expected - (zero * scale) * row_sum
    expected = expected * weight_scale
    if with_bias:
        expected = expected + bias
    assert out.shape == (rows, out_features) and out.is_contiguous()
    assert torch.equal(out, expected[:, :out_features])


def test_gemm_fuses_gelu_and_casts_to_the_output_dtype():
    weight, weight_scale, row_sum, bias = _layer_tensors()
    codes, scale, zero = fused_int8.rows_to_int8(_rows(40, 84, seed=6), 8, False, 88)
    plain = fused_int8.int8_gemm(codes, scale, zero, weight, weight_scale, row_sum, bias, 100, torch.float32, True)
    gelu = fused_int8.int8_gemm(codes, scale, zero, weight, weight_scale, row_sum, bias, 100, torch.float32, True,
                                gelu=True)
    assert torch.allclose(gelu, F.gelu(plain), rtol=1e-6, atol=1e-6)
    assert (plain < -1).any()  # GELU's negative side is exercised
    half = fused_int8.int8_gemm(codes, scale, zero, weight, weight_scale, row_sum, bias, 100, torch.bfloat16, True)
    assert half.dtype == torch.bfloat16
    if DEVICE.type == "cuda":
        assert torch.equal(half, plain.to(torch.bfloat16))  # round to nearest even, as torch casts
    else:  # Triton's interpreter truncates to bfloat16 whatever rounding the kernel asks for
        step = torch.finfo(torch.bfloat16).eps * plain.abs()
        assert ((half.float() - plain).abs() <= step).all() and not torch.equal(half, torch.zeros_like(half))
    empty = fused_int8.int8_gemm(codes[:0], scale[:0], zero[:0], weight, weight_scale, row_sum, bias, 100,
                                 torch.float32, True)
    assert empty.shape == (0, 100)


# --- layers and models ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wall_w8a8_real():
    model, _ = load_world_model("wall")
    quantize_(model, QuantConfig.uniform(w_bits=8, a_bits=8, a_granularity="per_token"))
    return to_real_backend_(model).to(DEVICE).eval()


def _rollout(model: nn.Module, batch: int = 2) -> torch.Tensor:
    z0, actions = wall_inputs(batch=batch)
    with torch.no_grad():
        return model.rollout_latent({k: v.to(DEVICE) for k, v in z0.items()}, actions.to(DEVICE))["visual"]


def test_fusing_the_neighbours_keeps_the_function_exactly(wall_w8a8_real):
    fused = copy.deepcopy(wall_w8a8_real)
    sites = fuse_int8_neighbours_(fused)
    # 10 blocks (4 encoder, 6 predictor) x norm1, norm2, GELU
    assert len(sites) == 30 and sum(isinstance(m, nn.LayerNorm) for m in fused.predictor.modules()) == 1
    assert fuse_int8_neighbours_(fused) == []  # nothing fuses twice
    assert torch.equal(_rollout(fused), _rollout(wall_w8a8_real))  # the torch path honours what moved in
    layer = fused.predictor.blocks[0].mlp.fc1
    assert "LayerNorm fused in, GELU fused in" in repr(layer)


def test_the_triton_kernel_plans_what_the_torch_kernel_plans(wall_w8a8_real):
    triton_model = copy.deepcopy(wall_w8a8_real)
    sites = set_int8_kernel_(triton_model, "triton")
    assert len(sites) == 30
    layers = [m for m in triton_model.modules() if isinstance(m, Int8Linear)]
    assert len(layers) == 40 and all(m.kernel == "triton" for m in layers)
    assert real_weight_bytes(triton_model)["kernels"] == ["int8_gemm_triton"]
    assert real_weight_bytes(wall_w8a8_real)["kernels"] == ["int8_gemm"]
    expected, got = _rollout(wall_w8a8_real), _rollout(triton_model)
    assert (got - expected).norm() / expected.norm() < 1e-2  # float32 rounding, through 5 steps


def test_engine_int8_kernel_is_checked(monkeypatch):
    with pytest.raises(ConfigError, match="unknown engine.int8_kernel 'cutlass'; valid: torch, triton"):
        check_int8_kernel("cutlass")
    assert check_int8_kernel("torch", "cpu") == "torch"
    monkeypatch.setattr(fused_int8, "interpreting", lambda: False)  # as in use: no interpreter
    with pytest.raises(ConfigError, match="runs on CUDA, not on 'cpu'"):
        check_int8_kernel("triton", "cpu")
    model, _ = load_world_model("wall")
    quantize_(model, QuantConfig.uniform(w_bits=8, a_bits=8, a_granularity="per_token"))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match="engine.int8_kernel"):
        apply_engine_backend_(model, "real", "cutlass")
    after = model.state_dict()  # refused before anything changed
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
