"""Rotations (method rotate): exact in float, online in front of the activation quantizer, composable
with GPTQ (which then sees the rotated inputs), refused before channel-scale folding."""

from __future__ import annotations

import copy

import pytest
import torch

from wmquant.errors import QuantizationError
from wmquant.quant import QuantConfig, QuantScheme, calibrate_and_quantize, qmath
from wmquant.quant.layers import input_fake_quant_hook
from wmquant.quant.methods import get_method
from wmquant.quant.methods.rotate import RotatedLinear, rotation_matrix, sylvester_hadamard
from wmquant.quant.recorders import CalibrationData, LinearInputRecorder, layer_input_rows

from quant_toy import calibration_runner, make_inputs, make_model

D = torch.float64


def _outputs(model, inputs):
    with torch.no_grad():
        out = model(*inputs)
    return out if isinstance(out, torch.Tensor) else torch.cat([t.flatten() for t in out])


@pytest.mark.parametrize("width, kind", [(64, "hadamard"), (40, "hadamard"), (64, "orthogonal")])
def test_rotations_are_orthogonal(width, kind):
    r = rotation_matrix(width, seed=3, kind=kind)
    torch.testing.assert_close(r @ r.T, torch.eye(width, dtype=D), rtol=0, atol=1e-12)
    if kind == "hadamard" and width == 64:  # a randomized Hadamard: entries +-1/sqrt(d)
        assert torch.allclose(r.abs(), torch.full_like(r, 64 ** -0.5))
    h = sylvester_hadamard(8)
    torch.testing.assert_close(h @ h.T, 8 * torch.eye(8, dtype=D))


def test_a_rotation_leaves_the_float_models_outputs_unchanged():
    model = make_model(dtype=D)
    reference = copy.deepcopy(model)
    inputs = make_inputs(model)
    rotate = get_method("rotate")
    report = rotate.transform(model, QuantConfig.uniform(w_bits=4, a_bits=4), CalibrationData(), rotate.make_options({}))
    assert report.report["rotated_layers"] and isinstance(model.encoder.blocks[0].attn.qkv, RotatedLinear)
    assert not torch.equal(model.encoder.blocks[0].attn.qkv.weight, reference.encoder.blocks[0].attn.qkv.weight)
    got, expected = _outputs(model, inputs), _outputs(reference, inputs)
    assert float((got - expected).norm() / expected.norm()) < 1e-5


def test_quantized_layers_rotate_their_input_before_quantizing_it():
    model = make_model(dtype=D)
    calibrate_and_quantize(model, "rotate", QuantConfig.uniform(w_bits=8, a_bits=8, a_granularity="per_token"),
                           calibration_runner(model))
    layer = model.encoder.blocks[0].mlp.fc1
    seen = []
    hook = layer.input_quantizer.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    x = torch.randn(3, layer.in_features, dtype=D)
    layer(x)
    hook.remove()
    torch.testing.assert_close(seen[0], x @ layer.input_rotation)


def test_the_training_hook_quantizes_a_rotated_layers_rotated_input():
    """rollout and mixed measure and train a rotated model before it is quantized; the hook must
    quantize x R, as the rotated QuantLinear will, not x."""
    model = make_model(dtype=D)
    rotate = get_method("rotate")
    rotate.transform(model, QuantConfig.uniform(w_bits=4, a_bits=4), CalibrationData(), rotate.make_options({}))
    layer = model.encoder.blocks[0].mlp.fc1
    scheme = QuantScheme(a_bits=4, a_granularity="per_token")
    x = torch.randn(5, layer.in_features, generator=torch.Generator().manual_seed(0), dtype=D)
    handle = layer.register_forward_pre_hook(input_fake_quant_hook(scheme))
    with torch.no_grad():
        got = layer(x)
    handle.remove()
    rotated = qmath.per_token_fake_quantize(x @ layer.input_rotation, 4)
    torch.testing.assert_close(got, torch.nn.functional.linear(rotated, layer.weight, layer.bias), rtol=1e-12, atol=1e-12)
    unrotated = torch.nn.functional.linear(qmath.per_token_fake_quantize(x, 4) @ layer.input_rotation, layer.weight, layer.bias)
    assert not torch.allclose(got, unrotated)


def test_the_training_hook_quantizes_a_convs_tokens_along_its_channels():
    conv = torch.nn.Conv2d(3, 4, kernel_size=2, stride=2).double()
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=D)
    handle = conv.register_forward_pre_hook(input_fake_quant_hook(QuantScheme(a_bits=3, a_granularity="per_token")))
    with torch.no_grad():
        got = conv(x)
    handle.remove()
    tokens = qmath.per_token_fake_quantize(x.movedim(1, -1), 3).movedim(-1, 1)  # one scale per pixel, over channels
    torch.testing.assert_close(got, conv(tokens), rtol=0, atol=0)


def test_gptq_after_a_rotation_records_the_rotated_inputs():
    model = make_model(dtype=D)
    rotate = get_method("rotate")
    rotate.transform(model, QuantConfig.uniform(w_bits=4), CalibrationData(), rotate.make_options({}))
    layer = model.encoder.blocks[0].mlp.fc2
    x = torch.randn(4, 7, layer.in_features, dtype=D)
    torch.testing.assert_close(layer_input_rows(layer, x), x.reshape(-1, layer.in_features) @ layer.input_rotation)
    fresh = make_model(dtype=D)
    report = calibrate_and_quantize(fresh, ["rotate", "gptq"], QuantConfig.uniform(w_bits=4), calibration_runner(fresh))
    assert report["method"] == "rotate+gptq" and set(report["method_report"]) == {"rotate", "gptq"}
    recorder = LinearInputRecorder(model, ["encoder.blocks.0.mlp.fc2"])
    with torch.no_grad():
        layer(x)
    recorder.remove()
    rows = x.reshape(-1, layer.in_features) @ layer.input_rotation
    torch.testing.assert_close(recorder.grams["encoder.blocks.0.mlp.fc2"].to(D), rows.T @ rows)


def test_channel_scale_folding_cannot_follow_a_rotation():
    with pytest.raises(QuantizationError, match="awq folds per-channel scales"):
        calibrate_and_quantize(make_model(dtype=D), ["rotate", "awq"], QuantConfig.uniform(w_bits=4), lambda: None)


def test_rotation_tightens_activation_outliers_at_w4a4_per_tensor():
    errors = {}
    for method in ("rtn", "rotate"):
        model = make_model(dtype=D, outliers=True)
        reference = copy.deepcopy(model)
        inputs = make_inputs(model)
        calibrate_and_quantize(model, method, QuantConfig.uniform(w_bits=4, a_bits=4), calibration_runner(model))
        got, expected = _outputs(model, inputs), _outputs(reference, inputs)
        errors[method] = float((got - expected).norm() / expected.norm())
    assert errors["rotate"] < errors["rtn"]


def test_rotate_then_gptq_runs_at_w4a4_with_static_activations():
    model = make_model(dtype=D)
    report = calibrate_and_quantize(model, ["rotate", "gptq"], QuantConfig.uniform(w_bits=4, a_bits=4),
                                    calibration_runner(model))
    assert [p["purpose"] for p in report["calibration_passes"]] == ["record method inputs", "observe activation ranges"]
    layer = model.predictor.blocks[0].mlp.fc1
    assert layer.input_rotation is not None and layer.input_quantizer.frozen and layer.weight_quantizer.fixed_qparams


@pytest.mark.parametrize("options, match", [
    ({"kind": "givens"}, "kind"), ({"min_width": 0}, "min_width"), ({"seed": 1.5}, "seed"), ({"seed": True}, "seed"),
])
def test_bad_rotate_options_are_refused(options, match):
    with pytest.raises(QuantizationError, match=match):
        get_method("rotate").make_options(options)


def test_hadamard_rotations_carry_random_signs_drawn_from_the_seed():
    plain = sylvester_hadamard(8) / 8 ** 0.5
    first, second = rotation_matrix(8, 0), rotation_matrix(8, 1)
    assert torch.equal(first.abs(), plain.abs())  # a Hadamard matrix, columns scaled by +-1
    signs = (first / plain)[0]
    assert torch.equal(first, plain * signs[None, :]) and set(signs.tolist()) == {-1.0, 1.0}
    assert not torch.equal(first, second) and torch.equal(first, rotation_matrix(8, 0))


def test_min_width_rotates_every_linear_at_least_that_wide_and_no_other():
    model = make_model(dtype=D)
    widths = {name: m.in_features for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert 40 in widths.values() and min(widths.values()) < 40 < max(widths.values())
    rotate = get_method("rotate")
    report = rotate.transform(model, QuantConfig.uniform(w_bits=4, a_bits=4), CalibrationData(),
                              rotate.make_options({"min_width": 40}))
    rotated = set(report.report["rotated_layers"])
    assert rotated == {name for name, width in widths.items() if width >= 40}
    for name, width in widths.items():
        assert isinstance(model.get_submodule(name), RotatedLinear) == (width >= 40), name


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_a_rotated_linear_keeps_the_bias_and_mode_of_the_layer_it_replaces(bias, training):
    torch.manual_seed(0)
    linear = torch.nn.Linear(8, 3, bias=bias, dtype=D).train(training)
    x = torch.randn(5, 8, dtype=D)
    expected = linear(x)
    rotated = RotatedLinear.from_linear(linear, rotation_matrix(8, seed=2))
    assert rotated.training == training
    assert (rotated.bias is None) == (not bias)
    torch.testing.assert_close(rotated(x), expected, rtol=0, atol=1e-12)
