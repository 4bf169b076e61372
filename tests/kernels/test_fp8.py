"""The FP8 W8A8 real backend: E4M3 elements identical to the fake quantizer's, one scaled FP8 GEMM
per Linear that agrees with fake quantization to float32 rounding on the CPU, the configs it
refuses, moves and state-dict loads, export -> load, and the CUDA path (skipped without CUDA).

Tolerances: one layer on the CPU agrees to float32 rounding (max |real - fake| <= 1e-5 x max |fake|);
a whole model to rounding flips of the next quantizers (relative L2 of a rollout < 5e-2, measured
0.015 on the Wall model); on CUDA, where the GEMM may return bfloat16, one layer within 1e-2."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from wmquant.errors import QuantizationError
from wmquant.kernels.export import export_quantized, load_real_quantized
from wmquant.kernels.fp8 import FP8_DTYPE, Fp8Linear, quantize_rows_fp8, scaled_mm_out_dtype
from wmquant.kernels.real import RealLinearSpec, check_real_config, real_linears, real_weight_bytes, to_real_backend_
from wmquant.models.checkpoint import load_world_model
from wmquant.quant import QuantConfig, QuantLinear, QuantScheme, freeze_, observe_activations, qmath, quantize_

from kernel_toy import layer_config as _config, layer_model as _layer_model, record_inputs, wall_inputs as _wall_inputs

LAYER_RTOL = 1e-5
FP8 = dict(w_bits=8, a_bits=8, w_format="fp8_e4m3", a_format="fp8_e4m3")


def _fake_and_real(scheme: QuantScheme, calibrate_with: torch.Tensor | None = None, **shape):
    root = quantize_(_layer_model(**shape), _config(scheme))
    fake = root.predictor.blocks[0].mlp.fc1
    if calibrate_with is not None:
        with observe_activations(root):
            fake(calibrate_with)
        freeze_(root)
        fake.input_quantizer.set_mode("quant")
    real = to_real_backend_(copy.deepcopy(root)).predictor.blocks[0].mlp.fc1
    return fake, real


def _assert_close(real: torch.Tensor, fake: torch.Tensor, rtol: float = LAYER_RTOL) -> None:
    assert real.shape == fake.shape and real.dtype == fake.dtype
    assert (real - fake).abs().max() <= rtol * fake.abs().max()


# --- elements ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_elements_times_scale_are_the_fake_quantized_values_bitwise(fmt):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 96, generator=gen) * torch.logspace(-3, 2, 96)
    x[5] = 0.0  # an all-zero row: scale clamps to SCALE_EPS, elements 0
    absmax = x.abs().amax(dim=-1, keepdim=True)
    elements, scale = qmath.fp8_elements(x, fmt, absmax)
    assert elements.dtype == qmath.FP8_TORCH_DTYPES[fmt]
    assert torch.equal(elements.float() * scale, qmath.fp8_fake_quantize(x, fmt, absmax))
    assert float(elements.float().abs().amax()) == qmath.FP8_FORMATS[fmt].max_value  # absmax maps onto the max
    # a static range narrower than the values saturates (the cast alone would give NaN)
    narrow, _ = qmath.fp8_elements(x, fmt, absmax / 4)
    assert not torch.isnan(narrow.float()).any()
    assert torch.equal(narrow.float() * qmath.fp8_scale(absmax / 4, fmt), qmath.fp8_fake_quantize(x, fmt, absmax / 4))


def test_activation_rows_reproduce_the_fp8_fake_quantizer():
    x = torch.randn(50, 84) * torch.linspace(0.1, 5, 84)
    elements, scale = quantize_rows_fp8(x)
    assert scale.shape == (50, 1)
    assert torch.equal(elements.float() * scale, qmath.format_fake_quantize_activation(x, "fp8_e4m3", per_token=True))
    static = torch.tensor(3.0)
    elements, scale = quantize_rows_fp8(x, static)
    assert scale.shape == (50, 1) and bool((scale == 3.0 / 448).all())
    assert torch.equal(elements.float() * scale,
                       qmath.format_fake_quantize_activation(x, "fp8_e4m3", per_token=False, absmax=static))


def test_cpu_scaled_gemm_returns_float32():
    assert scaled_mm_out_dtype("cpu") == torch.float32


# --- one layer --------------------------------------------------------------------------------------

@pytest.mark.parametrize("in_features,out_features", [(84, 40), (96, 48), (7, 5)])
def test_fp8_layer_matches_fake_quant_per_token(in_features, out_features):
    fake, real = _fake_and_real(QuantScheme(a_granularity="per_token", **FP8),
                                in_features=in_features, out_features=out_features)
    assert isinstance(real, Fp8Linear) and real.qweight.dtype == FP8_DTYPE
    assert real.qweight.shape == (out_features, in_features)
    assert real.kernel_weight.shape == (-(-out_features // 16) * 16, -(-in_features // 16) * 16)
    assert torch.equal(real.dequantized_weight(), fake.weight_quantizer(fake.weight))
    x = torch.randn(3, 70, in_features) * 2
    _assert_close(real(x), fake(x))


def test_fp8_layer_matches_fake_quant_with_a_static_range():
    calibration = torch.randn(200, 84) * 3
    fake, real = _fake_and_real(QuantScheme(**FP8), calibrate_with=calibration)
    assert real.a_granularity == "per_tensor"
    assert float(real.input_absmax) == float(calibration.abs().max())
    x = torch.randn(64, 84) * 4  # wider than the calibrated range: both saturate alike
    _assert_close(real(x), fake(x))


def test_fp8_layer_survives_state_dict_round_trip_moves_and_dtype_casts():
    _, real = _fake_and_real(QuantScheme(a_granularity="per_token", **FP8))
    x = torch.randn(20, 84)
    expected = real(x)
    fresh = Fp8Linear(84, 40, True, "per_token")
    fresh.load_state_dict(real.state_dict())
    assert torch.equal(fresh(x), expected)
    moved = copy.deepcopy(real).to("cpu")
    assert torch.equal(moved(x), expected)
    assert moved.qweight.data_ptr() == moved.kernel_weight.data_ptr()  # the elements live once
    cast = copy.deepcopy(real).to(torch.bfloat16)  # casts every floating buffer; prepare() restores E4M3
    assert cast.qweight.dtype == FP8_DTYPE and torch.equal(cast.qweight.float(), real.qweight.float())


def test_weight_bytes_are_one_byte_per_weight_plus_scales():
    _, real = _fake_and_real(QuantScheme(a_granularity="per_token", **FP8), in_features=96, out_features=48)
    root = nn.Module()
    root.layer = real
    counted = real_weight_bytes(root)
    assert counted["stored_bytes"] == 48 * 96 + 48 * 4
    assert counted["fp16_bytes"] == 2 * 48 * 96 and counted["kernels"] == ["fp8_scaled_mm"]


# --- refusals ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme,match", [
    (QuantScheme(w_bits=8, w_format="fp8_e4m3"), "activations in float"),
    (QuantScheme(w_bits=8, a_bits=8, w_format="fp8_e4m3", a_granularity="per_token"), "a_format=int"),
    (QuantScheme(w_bits=8, a_bits=8, a_format="fp8_e4m3", a_granularity="per_token"), "w_format=int"),
    (QuantScheme(w_bits=8, a_bits=8, w_format="fp8_e5m2", a_format="fp8_e5m2", a_granularity="per_token"), "fp8_e5m2"),
    (QuantScheme(w_bits=4, a_bits=4, w_format="mxfp4", a_format="mxfp4", a_granularity="per_token"), "mxfp4"),
    (QuantScheme(w_bits=4, w_format="nvfp4"), "nvfp4"),
])
def test_formats_without_a_real_kernel_are_refused_by_name(scheme, match):
    root = quantize_(_layer_model(96, 32), _config(scheme))
    before = root.predictor.blocks[0].mlp.fc1
    with pytest.raises(QuantizationError, match=match) as raised:
        to_real_backend_(root)
    assert "predictor.blocks.0.mlp.fc1" in str(raised.value) and "\n" not in str(raised.value)
    assert root.predictor.blocks[0].mlp.fc1 is before
    with pytest.raises(QuantizationError, match=match):
        check_real_config(_layer_model(96, 32), _config(scheme))


def test_fp8_configs_pass_the_pre_calibration_check():
    check_real_config(_layer_model(96, 32), _config(QuantScheme(**FP8)))
    check_real_config(_layer_model(96, 32), _config(QuantScheme(a_granularity="per_token", a_include_zero=False, **FP8)))
    assert RealLinearSpec.from_dict({"kind": "fp8_gemm", "in_features": 4, "out_features": 2, "bias": False,
                                     "w_bits": 8, "a_bits": 8, "a_granularity": "per_token"}).kind == "fp8_gemm"


# --- the shipped Wall model ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wall_fp8():
    model, document = load_world_model("wall")
    quantize_(model, QuantConfig.uniform(a_granularity="per_token", **FP8))
    return model, document


def test_wall_model_fp8_layers_and_rollouts_agree(wall_fp8):
    fake, _ = wall_fp8
    real = to_real_backend_(copy.deepcopy(fake))
    assert not any(isinstance(m, QuantLinear) for m in real.modules())
    assert len(real_linears(real)) == 40 and all(isinstance(m, Fp8Linear) for _, m in real_linears(real))
    inputs, hooks = record_inputs(fake, (QuantLinear,))
    z0, actions = _wall_inputs()
    with torch.no_grad():
        rollout_fake = fake.rollout_latent(z0, actions)["visual"]
        fake.encode_obs({"visual": torch.rand(2, 1, 3, 64, 64) * 2 - 1, "proprio": torch.randn(2, 1, 2)})
    for hook in hooks:
        hook.remove()
    assert len(inputs) == 40
    with torch.no_grad():
        for name, x in inputs.items():
            _assert_close(real.get_submodule(name)(x), fake.get_submodule(name)(x))
        rollout_real = real.rollout_latent(z0, actions)["visual"]
    assert (rollout_real - rollout_fake).norm() / rollout_fake.norm() < 5e-2


def test_fp8_export_stores_e4m3_and_loads_without_float_weights(tmp_path, wall_fp8):
    from safetensors import safe_open

    fake, document = wall_fp8
    section = export_quantized(fake, QuantConfig.uniform(a_granularity="per_token", **FP8), tmp_path / "fp8", document)
    assert {spec["kind"] for spec in section["layers"].values()} == {"fp8_gemm"}
    assert 0.5 < section["weight_bytes"]["stored_over_fp16"] < 0.52  # 1 byte per weight + one fp32 scale per row
    with safe_open(str(tmp_path / "fp8" / "model.safetensors"), framework="pt") as handle:
        assert handle.get_tensor("predictor.blocks.0.attn.qkv.qweight").dtype == FP8_DTYPE
        assert "predictor.blocks.0.attn.qkv.weight" not in set(handle.keys())
    loaded, _ = load_real_quantized(tmp_path / "fp8")
    reference = to_real_backend_(copy.deepcopy(fake))
    z0, actions = _wall_inputs(seed=3)
    with torch.no_grad():
        assert torch.equal(loaded.rollout_latent(z0, actions)["visual"], reference.rollout_latent(z0, actions)["visual"])


# --- GPU ----------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("rows", [3, 16, 17, 300])
def test_cuda_fp8_layer_matches_fake_quant(rows):
    fake, real = _fake_and_real(QuantScheme(a_granularity="per_token", **FP8), in_features=84, out_features=44)
    x = torch.randn(rows, 84)
    gpu = copy.deepcopy(real).cuda()
    out = gpu(x.cuda()).cpu()
    tolerance = LAYER_RTOL if gpu.gemm_out_dtype == torch.float32 else 1e-2
    _assert_close(out, fake(x), tolerance)


# --- through the planning CLI -------------------------------------------------------------------------

@pytest.mark.parametrize("formats", [[], ["w_format=fp8_e4m3", "a_format=fp8_e4m3"]], ids=["int8", "fp8"])
def test_quant_run_on_the_real_backend_with_static_ranges(tmp_path, formats):
    """A whole `wmquant quant` run with engine.backend=real and calibrated per-tensor ranges (whose
    0-dim scales the run's resume fingerprint must hash)."""
    import json

    from wmquant.cli import main

    out = tmp_path / "run"
    code = main(["quant", "--config-name", "plan_wall.yaml", "model_name=wall", "quant=true", "quant_encoder=true",
                 "predictor_wbit=8", "predictor_abit=8", "encoder_wbit=8", "encoder_abit=8", "calib_mode_a=layer_wise",
                 "engine.backend=real", "n_evals=2", "quant_iter=1", "planner.max_iter=1",
                 "planner.sub_planner.num_samples=8", "planner.sub_planner.topk=2", "planner.sub_planner.opt_steps=1",
                 "save_plots=false", f"output_dir={out}", *formats])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["quant"]["backend"] == "real" and len(result["success_by_iter"]) == 1
