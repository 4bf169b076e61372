"""The fused GPU fake-quant kernels give qmath's bits exactly, and are used only where they may be.

The bit-equality tests need CUDA and Triton (they skip elsewhere); they compare int32 views, so a
signed zero or a one-ulp difference fails them.
"""

import pytest
import torch

from wmquant.quant import QuantConfig, calibrate_and_quantize, fused_fake_quant, qmath
from wmquant.quant.layers import ActQuantizer

checkpoint = pytest.importorskip("wmquant.models.checkpoint")

needs_gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and fused_fake_quant.triton is not None), reason="needs CUDA and Triton"
)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.view(torch.int32), b.view(torch.int32))


# --- where the fused path applies (runs everywhere) -------------------------------------------------


def test_never_applies_to_cpu_tensors_or_other_dtypes():
    assert not fused_fake_quant.applies(torch.randn(4, 8))
    assert not fused_fake_quant.applies(torch.randn(4, 8, dtype=torch.float64))


def test_env_switch_turns_it_off(monkeypatch):
    monkeypatch.setenv(fused_fake_quant.ENV_SWITCH, "0")
    assert not fused_fake_quant.enabled()
    monkeypatch.setenv(fused_fake_quant.ENV_SWITCH, "1")
    assert fused_fake_quant.enabled()


@needs_gpu
def test_applies_only_without_a_gradient_to_build_and_on_contiguous_fp32():
    x = torch.randn(16, 32, device="cuda")
    assert fused_fake_quant.applies(x)
    assert not fused_fake_quant.applies(x.t())
    assert not fused_fake_quant.applies(x.half())
    leaf = x.clone().requires_grad_(True)
    assert not fused_fake_quant.applies(leaf)
    with torch.no_grad():
        assert fused_fake_quant.applies(leaf)


# --- bit equality with qmath (CUDA) ----------------------------------------------------------------


def _hard_rows(cols: int, device: str) -> torch.Tensor:
    """Random rows plus the edge cases: all zeros, constant, one outlier, exact rounding ties,
    all-negative, all-positive, tiny and huge magnitudes."""
    gen = torch.Generator(device="cpu").manual_seed(cols)
    rows = [
        torch.randn(64, cols, generator=gen) * 3,
        torch.zeros(1, cols),
        torch.full((1, cols), 0.7),
        torch.full((1, cols), -2.0),
        torch.randn(1, cols, generator=gen).abs() + 1,
        -(torch.randn(1, cols, generator=gen).abs() + 1),
        torch.randn(1, cols, generator=gen) * 1e-12,
        torch.randn(1, cols, generator=gen) * 1e6,
    ]
    outlier = torch.randn(1, cols, generator=gen)
    outlier[0, 0] = 80.0
    rows.append(outlier)
    # Exact rounding ties at 4 bits: values on the half-way points of a grid of step 0.25, in rows
    # whose range makes the scale exactly 0.25 (symmetric: absmax 1.75 = 7 x 0.25; asymmetric:
    # [-1.75, 2.0], 15 steps of 0.25).
    ties = (torch.arange(cols, dtype=torch.float32) % 14 - 7) * 0.25 + 0.125
    for low, high in ((-1.75, 1.75), (-1.75, 2.0)):
        row = ties.clone()
        row[0] = low
        if cols > 1:
            row[1] = high
        rows.append(row[None])
    return torch.cat(rows).to(device)


@needs_gpu
@pytest.mark.parametrize("cols", [1, 7, 84, 128, 336, 1000, 4099])
@pytest.mark.parametrize("symmetric", [False, True])
def test_per_token_matches_qmath_bit_for_bit(cols, symmetric):
    x = _hard_rows(cols, "cuda")
    for bits in qmath.QUANT_BITS:
        expected = qmath.per_token_fake_quantize(x, bits, symmetric)
        assert _same_bits(fused_fake_quant.fake_quantize_per_token(x, bits, symmetric), expected), (bits, cols)


@needs_gpu
@pytest.mark.parametrize("symmetric", [False, True])
def test_per_tensor_matches_qmath_bit_for_bit(symmetric):
    x = _hard_rows(336, "cuda")
    ranges = [
        (x.amin(), x.amax()),
        (torch.tensor(-1.5), torch.tensor(0.8)),
        (torch.tensor(0.0), torch.tensor(0.0)),
        (torch.tensor(-1.75), torch.tensor(1.75)),
        (torch.tensor(-1.75), torch.tensor(2.0)),
    ]  # ties at 4 bits
    for bits in qmath.QUANT_BITS:
        for low, high in ranges:
            scale, zero_point = qmath.qparams_from_range(low.cuda(), high.cuda(), bits, symmetric)
            expected = qmath.fake_quantize(x, scale, zero_point, bits, symmetric)
            got = fused_fake_quant.fake_quantize_per_tensor(x, scale, zero_point, bits, symmetric)
            assert _same_bits(got, expected), (bits, float(low), float(high))


@needs_gpu
def test_large_batched_tensor_matches_qmath():
    """The shape of a Wall CEM rollout's MLP input: (samples x tokens, hidden)."""
    x = torch.randn(300 * 64 * 4, 336, device="cuda") * torch.linspace(0.1, 20, 336, device="cuda")
    assert _same_bits(fused_fake_quant.fake_quantize_per_token(x, 4, False), qmath.per_token_fake_quantize(x, 4))
    scale, zero_point = qmath.qparams_from_range(x.amin(), x.amax(), 6, False)
    assert _same_bits(
        fused_fake_quant.fake_quantize_per_tensor(x, scale, zero_point, 6, False),
        qmath.fake_quantize(x, scale, zero_point, 6, False),
    )


# --- inside the model (CUDA) -----------------------------------------------------------------------

CONFIG = dict(
    img_size=32,
    num_hist=2,
    frameskip=2,
    proprio_dim=2,
    action_dim=2,
    decoder=None,
    encoder=dict(backend="vit", patch_size=8, dim=32, depth=2, heads=4, mlp_ratio=2.0),
    predictor=dict(depth=2, heads=4, dim_head=8, mlp_dim=64, dropout=0.0),
)


def _inputs(seed: int, batch: int = 8):
    gen = torch.Generator().manual_seed(seed)
    obs = {
        "visual": torch.rand(batch, 1, 3, 32, 32, generator=gen) * 2 - 1,
        "proprio": torch.randn(batch, 1, 2, generator=gen),
    }
    return {k: v.cuda() for k, v in obs.items()}, torch.randn(batch, 3, 4, generator=gen).cuda()


@needs_gpu
@pytest.mark.parametrize("granularity", ["per_tensor", "per_token"])
def test_quantized_world_model_rollout_is_unchanged(monkeypatch, granularity):
    torch.manual_seed(0)
    model = checkpoint.build_world_model(CONFIG).cuda().eval()

    def calibrate():
        with torch.no_grad():
            for seed in range(3):
                model.rollout(*_inputs(seed))

    config = QuantConfig.uniform(w_bits=4, a_bits=4, a_granularity=granularity)
    calibrate_and_quantize(model, "rtn", config, calibrate)
    assert any(isinstance(m, ActQuantizer) and m.mode == "quant" for m in model.modules())
    with torch.no_grad():
        fused = model.rollout(*_inputs(9))
        monkeypatch.setenv(fused_fake_quant.ENV_SWITCH, "0")
        eager = model.rollout(*_inputs(9))
    for a, b in zip(torch.utils._pytree.tree_leaves(fused), torch.utils._pytree.tree_leaves(eager)):
        assert _same_bits(a, b)


@needs_gpu
def test_gradients_still_pass_through_a_quantizer():
    """The GD planner differentiates through the model: that path stays eager and straight-through."""
    quantizer = ActQuantizer(4, granularity="per_token")
    x = torch.randn(32, 16, device="cuda", requires_grad=True)
    quantizer(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
