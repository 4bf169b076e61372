"""Real low-bit kernels: exactness of the integer paths, agreement with fake quantization, the
configs they refuse, export -> load without float weights, weight bytes.

Tolerances (stated in wmquant.kernels.real): one layer, CPU, float32: real and fake agree to float32
rounding (max |real - fake| <= 1e-5 x max |fake|). A whole model quantized W8A8 agrees to rounding
flips of the next quantizers (relative L2 of a rollout < 5e-2, measured ~1e-2 on the Wall model);
W4A16 on the CPU runs the same float32 weights (relative L2 < 1e-5).
"""

from __future__ import annotations

import copy
import types

import pytest
import torch
from torch import nn

from wmquant.errors import CheckpointError, ConfigError, QuantizationError
from wmquant.kernels.export import export_quantized, load_real_quantized
from wmquant.kernels.int4 import AUTO_PACKED_MAX_ROWS, Int4WeightOnlyLinear, kernel_layout, pack_nibbles, unpack_nibbles
from wmquant.kernels.int8 import Int8Linear, int8_matmul, quantize_rows
from wmquant.kernels.real import (apply_engine_backend_, check_real_config, real_linears, 
                                  real_weight_bytes, to_real_backend_)
from wmquant.models.checkpoint import load_world_model
from wmquant.quant import QuantConfig, QuantLinear, QuantScheme, freeze_, observe_activations, quantize_
from wmquant.quant import qmath

from kernel_toy import layer_config as _config, layer_model as _layer_model, record_inputs, wall_inputs as _wall_inputs

LAYER_RTOL = 1e-5


def _quantized_layer(scheme: QuantScheme, in_features=84, out_features=40, calibrate_with=None) -> QuantLinear:
    root = quantize_(_layer_model(in_features, out_features), _config(scheme))
    layer = root.predictor.blocks[0].mlp.fc1
    if calibrate_with is not None:
        with observe_activations(root):
            layer(calibrate_with)
        freeze_(root)
        layer.input_quantizer.set_mode("quant")
    return layer


def _assert_layer_close(real: torch.Tensor, fake: torch.Tensor) -> None:
    assert real.shape == fake.shape and real.dtype == fake.dtype
    assert (real - fake).abs().max() <= LAYER_RTOL * fake.abs().max()


# --- integer arithmetic ---------------------------------------------------------------------------

@pytest.mark.parametrize("rows,cols,out", [(5, 24, 16), (40, 84, 44), (3, 7, 5)])
def test_int8_matmul_is_exact(rows, cols, out):
    gen = torch.Generator().manual_seed(rows)
    a = torch.randint(-128, 128, (rows, cols), dtype=torch.int8, generator=gen)
    w = torch.randint(-128, 128, (out, cols), dtype=torch.int8, generator=gen)
    expected = a.to(torch.int64) @ w.to(torch.int64).t()
    got = int8_matmul(a, w)
    assert got.dtype == torch.int32 and torch.equal(got.to(torch.int64), expected)


@pytest.mark.parametrize("bits,symmetric", [(8, False), (8, True), (4, False), (6, True)])
def test_activation_codes_reproduce_per_token_fake_quant_bitwise(bits, symmetric):
    x = torch.randn(50, 84) * torch.linspace(0.1, 5, 84)
    codes, scale, zero_point = quantize_rows(x, bits, symmetric)
    assert codes.dtype == torch.int8
    dequantized = (codes.float() - zero_point) * scale
    assert torch.equal(dequantized, qmath.per_token_fake_quantize(x, bits, symmetric))


def test_nibble_packing_round_trips_with_odd_width():
    codes = torch.randint(0, 16, (6, 13))
    packed = pack_nibbles(codes)
    assert packed.shape == (6, 7) and packed.dtype == torch.uint8
    assert packed[0, 0] == codes[0, 0] * 16 + codes[0, 1]  # even index in the high nibble
    assert torch.equal(unpack_nibbles(packed, 13).long(), codes)


@pytest.mark.parametrize("in_features,group,expected", [(84, None, (32, 96)), (404, 128, (128, 512)),
                                                        (192, 128, (128, 256)), (256, 64, (64, 256)), (64, 256, (64, 64))])
def test_int4_kernel_layout(in_features, group, expected):
    assert kernel_layout(in_features, group) == expected


# --- one layer: real vs fake ----------------------------------------------------------------------

@pytest.mark.parametrize("scheme", [
    QuantScheme(w_bits=8, a_bits=8, a_granularity="per_token"),
    QuantScheme(w_bits=8, a_bits=8, a_granularity="per_token", a_symmetric=True),
    QuantScheme(w_bits=4, a_bits=8, a_granularity="per_token"),
    QuantScheme(w_bits=6, a_bits=6, a_granularity="per_token"),
], ids=["w8a8", "w8a8_sym", "w4a8", "w6a6"])
def test_int8_layer_matches_fake_quant_per_token(scheme):
    layer = _quantized_layer(scheme)
    x = torch.randn(3, 70, 84) * 2
    converted = to_real_backend_(_wrap(layer)).get_submodule("layer")
    assert isinstance(converted, Int8Linear)
    _assert_layer_close(converted(x), layer(x))


def _wrap(layer: nn.Module) -> nn.Module:
    root = nn.Module()
    root.layer = copy.deepcopy(layer)
    return root


def test_int8_layer_matches_fake_quant_with_a_static_range():
    calibration = torch.randn(200, 84) * 3
    layer = _quantized_layer(QuantScheme(w_bits=8, a_bits=8), calibrate_with=calibration)
    converted = to_real_backend_(_wrap(layer)).layer
    assert converted.a_granularity == "per_tensor"
    x = torch.randn(64, 84) * 3
    _assert_layer_close(converted(x), layer(x))


@pytest.mark.parametrize("scheme,in_features", [
    (QuantScheme(w_bits=4), 84),
    (QuantScheme(w_bits=4, w_group_size=32, w_symmetric=False), 84),
    (QuantScheme(w_bits=4, w_group_size=64), 200),  # last group shorter (200 = 3 x 64 + 8)
    (QuantScheme(w_bits=3, w_group_size=128, w_symmetric=False), 336),
], ids=["w4_channel", "w4_g32_asym", "w4_g64_ragged", "w3_g128_asym"])
def test_int4_layer_matches_fake_quant(scheme, in_features):
    layer = _quantized_layer(scheme, in_features=in_features, out_features=36)
    converted = to_real_backend_(_wrap(layer), int4_kernel="int4pack").layer
    assert isinstance(converted, Int4WeightOnlyLinear) and converted.kernel == "int4pack"
    # The stored codes describe exactly the fake-quant weight ...
    assert torch.equal(converted.dequantized_weight(), layer.weight_quantizer(layer.weight))
    # ... and the packed kernel computes with it.
    x = torch.randn(2, 45, in_features)
    _assert_layer_close(converted(x), layer(x))
    for kernel in ("dequant", "auto"):
        _assert_layer_close(to_real_backend_(_wrap(layer), int4_kernel=kernel).layer(x), layer(x))
    bf16 = converted(x.bfloat16())  # the packed kernel with bf16 activations: bf16 accuracy
    assert bf16.dtype == torch.bfloat16
    assert (bf16.float() - layer(x)).norm() / layer(x).norm() < 2e-2


def test_int4_auto_kernel_runs_the_packed_kernel_only_where_it_pays():
    layer = _quantized_layer(QuantScheme(w_bits=4, w_group_size=128), in_features=256, out_features=36)
    auto = to_real_backend_(_wrap(layer), int4_kernel="auto").layer
    pinned = to_real_backend_(_wrap(layer), int4_kernel="int4pack").layer
    dequant = to_real_backend_(_wrap(layer), int4_kernel="dequant").layer

    def call(rows: int, device: str, dtype: torch.dtype = torch.bfloat16):
        # the decision reads only the input's device, rows and dtype (no CUDA needed to check it)
        return types.SimpleNamespace(device=torch.device(device), shape=(rows, 256), dtype=dtype)

    limit = AUTO_PACKED_MAX_ROWS
    assert auto._packed_pays(call(limit, "cuda")) and not auto._packed_pays(call(limit + 1, "cuda"))
    assert pinned._packed_pays(call(100 * limit, "cuda")) and not dequant._packed_pays(call(1, "cuda"))
    assert auto._packed_pays(call(10_000, "cpu")) and not auto._packed_pays(call(1, "cpu", torch.float32))


def test_real_layers_survive_state_dict_round_trip_and_moves():
    layer = _quantized_layer(QuantScheme(w_bits=8, a_bits=8, a_granularity="per_token"))
    real = to_real_backend_(_wrap(layer)).layer
    fresh = Int8Linear(84, 40, True, 8, 8, False, "per_token")
    fresh.load_state_dict(real.state_dict())
    x = torch.randn(20, 84)
    assert torch.equal(fresh(x), real(x))
    moved = copy.deepcopy(real).to("cpu")
    assert torch.equal(moved(x), real(x))
    assert moved.qweight.data_ptr() == moved.kernel_weight.data_ptr()  # codes live once, in the padded buffer


# --- refusals -------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme,match", [
    (QuantScheme(w_bits=4, a_bits=8, w_group_size=32, a_granularity="per_token"), "group-wise"),
    (QuantScheme(w_bits=8, a_bits=8, w_symmetric=False, a_granularity="per_token"), "asymmetric weights"),
    (QuantScheme(w_bits=8), "weight-only W8A16"),
    (QuantScheme(w_bits=4, w_group_size=16), "groups of 32"),
])
def test_configs_without_a_real_kernel_are_refused(scheme, match):
    root = quantize_(_layer_model(96, 32), _config(scheme))
    before = root.predictor.blocks[0].mlp.fc1
    with pytest.raises(QuantizationError, match=match):
        to_real_backend_(root)
    assert root.predictor.blocks[0].mlp.fc1 is before  # nothing was swapped
    with pytest.raises(QuantizationError, match=match):
        check_real_config(_layer_model(96, 32), _config(scheme))


def test_uncalibrated_static_activations_and_attention_taps_are_refused():
    root = quantize_(_layer_model(84, 40), _config(QuantScheme(w_bits=8, a_bits=8)))
    with pytest.raises(QuantizationError, match="mode 'off'"):
        to_real_backend_(root)
    model, _ = load_world_model("wall")
    config = QuantConfig(predictor=QuantScheme(w_bits=8, a_bits=8, a_granularity="per_token"),
                         targets=("blocks", "attention_matmuls"))
    with pytest.raises(QuantizationError, match="attention matmul"):
        check_real_config(model, config)
    with pytest.raises(QuantizationError, match="no fake-quantized layer"):
        to_real_backend_(model)


def test_engine_backend_names_are_checked():
    with pytest.raises(ConfigError, match="engine.backend"):
        apply_engine_backend_(nn.Linear(2, 2), "int8")
    model = nn.Linear(2, 2)
    assert apply_engine_backend_(model, "fake") is model


# --- the shipped Wall model -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wall_w8a8():
    model, document = load_world_model("wall")
    quantize_(model, QuantConfig.uniform(w_bits=8, a_bits=8, a_granularity="per_token"))
    return model, document


def test_wall_model_layers_agree_on_their_own_inputs(wall_w8a8):
    """Each quantized layer of the shipped model, fed what it sees in a real rollout."""
    fake, _ = wall_w8a8
    real = to_real_backend_(copy.deepcopy(fake))
    inputs, hooks = record_inputs(fake, (QuantLinear,))
    z0, actions = _wall_inputs()
    with torch.no_grad():
        fake.rollout_latent(z0, actions)
        fake.encode_obs({"visual": torch.rand(2, 1, 3, 64, 64) * 2 - 1, "proprio": torch.randn(2, 1, 2)})
    for hook in hooks:
        hook.remove()
    assert len(inputs) == 40  # 4 encoder + 6 predictor blocks x 4 Linears
    with torch.no_grad():
        for name, x in inputs.items():
            _assert_layer_close(real.get_submodule(name)(x), fake.get_submodule(name)(x))


def test_wall_model_rollouts_agree_within_tolerance(wall_w8a8):
    fake, _ = wall_w8a8
    real = to_real_backend_(copy.deepcopy(fake))
    assert not any(isinstance(m, QuantLinear) for m in real.modules()) and len(real_linears(real)) == 40
    z0, actions = _wall_inputs()
    with torch.no_grad():
        a, b = fake.rollout_latent(z0, actions)["visual"], real.rollout_latent(z0, actions)["visual"]
    assert (a - b).norm() / a.norm() < 5e-2

    model, _ = load_world_model("wall")
    quantize_(model, QuantConfig.uniform(w_bits=4, w_group_size=128))
    w4 = to_real_backend_(copy.deepcopy(model))
    with torch.no_grad():
        a, b = model.rollout_latent(z0, actions)["visual"], w4.rollout_latent(z0, actions)["visual"]
    assert (a - b).norm() / a.norm() < 1e-5


def test_w4_weight_bytes_are_counted_exactly_and_below_three_tenths_of_fp16():
    layer = _quantized_layer(QuantScheme(w_bits=4, w_group_size=128, w_symmetric=False), in_features=256, out_features=64)
    real = to_real_backend_(_wrap(layer))
    bytes_ = real_weight_bytes(real)
    # codes 64 x 128 B, fp32 scales 64 x 2 x 4 B, uint8 zero points 64 x 2 B
    assert bytes_["stored_bytes"] == 64 * 128 + 64 * 2 * 4 + 64 * 2 == 8832
    assert bytes_["fp16_bytes"] == 2 * 64 * 256
    assert bytes_["stored_over_fp16"] <= 0.3
    model, _ = load_world_model("wall")
    quantize_(model, QuantConfig.uniform(w_bits=4, w_group_size=128))
    assert real_weight_bytes(to_real_backend_(model))["stored_over_fp16"] <= 0.3


# --- export -----------------------------------------------------------------------------------------

def test_export_loads_without_float_weights_and_reproduces_outputs(tmp_path, wall_w8a8):
    from safetensors import safe_open

    fake, document = wall_w8a8
    section = export_quantized(fake, QuantConfig.uniform(w_bits=8, a_bits=8, a_granularity="per_token"),
                               tmp_path / "w8a8", document)
    assert len(section["layers"]) == 40 and section["format"] == "wmquant.real/1"
    with safe_open(str(tmp_path / "w8a8" / "model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
        assert handle.get_tensor("predictor.blocks.0.attn.qkv.qweight").dtype == torch.int8
    for name in section["layers"]:
        assert f"{name}.weight" not in keys and f"{name}.qweight" in keys
    loaded, loaded_doc = load_real_quantized(tmp_path / "w8a8")
    assert loaded_doc["planning"]["env"] == "wall"
    assert not any(hasattr(m, "weight") for _, m in real_linears(loaded))
    reference = to_real_backend_(copy.deepcopy(fake))
    z0, actions = _wall_inputs(seed=3)
    with torch.no_grad():
        assert torch.equal(loaded.rollout_latent(z0, actions)["visual"], reference.rollout_latent(z0, actions)["visual"])
    assert any(isinstance(m, QuantLinear) for m in fake.modules())  # the caller's fake-quant model is untouched


def test_export_cli_round_trip_w4a16(tmp_path, capsys):
    from wmquant.cli import main

    out = tmp_path / "w4"
    code = main(["export", "--model", "wall", "--method", "rtn", "--out", str(out), "--config",
                 "predictor_wbit=4", "predictor_abit=16", "encoder_wbit=4", "encoder_abit=16", "W_GROUP_SIZE=128"])
    assert code == 0 and "0.2" in capsys.readouterr().out
    loaded, document = load_real_quantized(out)
    assert document["quantization"]["weight_bytes"]["stored_over_fp16"] <= 0.3
    model, _ = load_world_model("wall")
    quantize_(model, QuantConfig.uniform(w_bits=4, w_group_size=128))
    z0, actions = _wall_inputs(seed=4)
    with torch.no_grad():
        a, b = model.rollout_latent(z0, actions)["visual"], loaded.rollout_latent(z0, actions)["visual"]
    assert (a - b).norm() / a.norm() < 1e-5
    assert main(["export", "--model", "wall", "--out", str(out)]) == 2  # exists, no --overwrite


def test_loading_rejects_what_is_not_a_complete_export(tmp_path, wall_w8a8):
    fake, document = wall_w8a8
    with pytest.raises(CheckpointError):
        load_real_quantized(tmp_path / "missing")
    export_quantized(fake, {}, tmp_path / "x", document)
    (tmp_path / "x" / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_real_quantized(tmp_path / "x")
    with pytest.raises(ConfigError, match="does not describe"):
        export_quantized(fake, {}, tmp_path / "y", load_world_model("pusht")[1])


# --- GPU ----------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("rows", [3, 16, 17, 300])
def test_cuda_int8_layer_matches_cpu(rows):
    layer = _quantized_layer(QuantScheme(w_bits=8, a_bits=8, a_granularity="per_token"), in_features=84, out_features=44)
    real = to_real_backend_(_wrap(layer)).layer
    x = torch.randn(rows, 84)
    cpu = real(x)
    gpu_out = copy.deepcopy(real).cuda()(x.cuda()).cpu()
    _assert_layer_close(gpu_out, cpu)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_int4_kernel_matches_its_weights_in_bf16():
    layer = _quantized_layer(QuantScheme(w_bits=4, w_group_size=128, w_symmetric=False), in_features=404, out_features=1024)
    real = copy.deepcopy(to_real_backend_(_wrap(layer), int4_kernel="int4pack").layer).cuda()
    assert real.kernel == "int4pack" and real.kernel_weight is not None, real.kernel_note
    x = torch.randn(500, 404, device="cuda")
    reference = x.double() @ layer.weight_quantizer(layer.weight).double().t().cuda() + layer.bias.double().cuda()
    out = real(x).double()
    assert (out - reference).norm() / reference.norm() < 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cem_loop_makes_no_host_sync():
    from wmquant.planning.cem import CEMConfig, CEMPlanner
    from wmquant.planning.engine import Engine
    from wmquant.planning.objective import Objective
    from wmquant.bench import build_case

    case = build_case("tiny_h3")
    for quant in (None, "w8a8"):
        model = case.model
        if quant:
            model = to_real_backend_(quantize_(copy.deepcopy(model), QuantConfig(
                predictor=QuantScheme(w_bits=8, a_bits=8, a_granularity="per_token"))))
        engine = Engine(model, case.normalization, case.img_size, Objective(), device=torch.device("cuda"))
        planner = CEMPlanner(CEMConfig(horizon=5, topk=8, num_samples=64, opt_steps=3), case.action_width)
        obs = {"visual": torch.randint(0, 255, (3, 32, 32, 3), dtype=torch.uint8).numpy(), "proprio": torch.randn(3, 2).numpy()}
        z0, goal = engine.encode(obs), engine.encode(obs)
        args = (torch.zeros(3, 5, 10, device="cuda"), torch.ones(3, 5, 10, device="cuda"),
                torch.randn(3, 3, 64, 5, 10, device="cuda"))
        planner.optimize(engine, z0, goal, *args)  # warm-up: sizes chunks, loads kernels
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            planner.optimize(engine, z0, goal, *args)
        finally:
            torch.cuda.set_sync_debug_mode(0)
