"""SmoothQuant: an exact equivalence in float, that flattens activation outliers."""

import pytest
import torch

from quant_toy import calibration_runner, make_inputs, make_model, relative_error
from wmquant.errors import QuantizationError
from wmquant.quant import QuantConfig, calibrate_and_quantize, get_method, set_quantization_
from wmquant.quant.calibration import CalibrationData
from wmquant.quant.methods._equivalence import smoothquant_scale
from wmquant.quant.stats import ActStatsRecorder

D = torch.float64


def _stats(model):
    with ActStatsRecorder(model) as recorder:
        calibration_runner(model)()
    return recorder.stats()


@pytest.mark.parametrize("fc_fc", [False, True])
def test_smoothing_leaves_float_outputs_unchanged(fc_fc):
    model = make_model(dtype=D)
    inputs = make_inputs(model)
    reference = model(*inputs).detach()
    stats = _stats(model)
    config = QuantConfig.uniform(w_bits=8, a_bits=8)
    method = get_method("smoothquant")
    options = method.make_options({"fc_fc": fc_fc, "alpha": 0.5})
    report = method.transform(model, config, CalibrationData(act_stats=stats), options).report
    assert len(report["smoothed_layers"]) == (12 if fc_fc else 8)
    with torch.no_grad():
        assert relative_error(model(*inputs), reference) < 1e-5
        changed = model.encoder.blocks[0].attn.qkv.weight
    assert not torch.allclose(changed, make_model(dtype=D).encoder.blocks[0].attn.qkv.weight)


def test_smoothing_divides_the_recorded_activation_maxima_by_the_scale():
    model = make_model(dtype=D)
    stats = _stats(model)
    before = model.predictor.blocks[0].attn.qkv.weight.detach().clone()
    expected = smoothquant_scale(stats["predictor.blocks.0.attn.qkv"], before, 0.5)
    get_method("smoothquant").transform(model, QuantConfig.uniform(w_bits=8, a_bits=8), CalibrationData(act_stats=stats),
                                        get_method("smoothquant").make_options({}))
    after = _stats(model)["predictor.blocks.0.attn.qkv"]
    assert torch.allclose(after.to(D), stats["predictor.blocks.0.attn.qkv"].to(D) / expected, rtol=1e-5)
    # SmoothQuant's balance: afterwards max|x_j| = max|W[:, j]| (alpha = 0.5)
    w_max = model.predictor.blocks[0].attn.qkv.weight.detach().abs().amax(dim=0)
    assert torch.allclose(after.to(D), w_max, rtol=1e-5)


def test_smoothquant_beats_rtn_with_outliers_at_w8a8_per_tensor():
    errors = {}
    for method in ("rtn", "smoothquant"):
        model = make_model()
        inputs = make_inputs(model, seed=7)
        reference = model(*inputs).detach()
        stats = _stats(model) if method == "smoothquant" else None
        calibrate_and_quantize(model, method, QuantConfig.uniform(w_bits=8, a_bits=6), calibration_runner(model),
                               act_stats=stats)
        errors[method] = relative_error(model(*inputs), reference)
        set_quantization_(model, False)
        assert relative_error(model(*inputs), reference) < 1e-4
    assert errors["smoothquant"] < errors["rtn"]


def test_bad_alpha_and_wrong_statistics_shape():
    method = get_method("smoothquant")
    with pytest.raises(QuantizationError, match="alpha"):
        method.make_options({"alpha": 1.5})
    model = make_model()
    stats = _stats(model)
    stats["encoder.blocks.1.mlp.fc1"] = torch.ones(3)
    with pytest.raises(QuantizationError, match="3 channels"):
        calibrate_and_quantize(model, "smoothquant", QuantConfig.uniform(w_bits=8, a_bits=8), calibration_runner(model),
                               act_stats=stats)


def test_fc_fc_moves_the_proj_input_scale_from_v_into_proj():
    model = make_model(dtype=D)
    stats = _stats(model)
    attn = model.encoder.blocks[1].attn
    inner = attn.proj.in_features
    qkv_before, bias_before = attn.qkv.weight.detach().clone(), attn.qkv.bias.detach().clone()
    proj_before = attn.proj.weight.detach().clone()
    scale = smoothquant_scale(stats["encoder.blocks.1.attn.proj"], proj_before, 0.5)
    method = get_method("smoothquant")
    method.transform(model, QuantConfig.uniform(w_bits=8, a_bits=8), CalibrationData(act_stats=stats),
                     method.make_options({"fc_fc": True}))
    # V's rows (the last third of qkv) and their biases are divided by s, proj's columns multiplied by
    # it; Q and K's rows keep their values (the norm1 -> qkv fold scales columns, not rows)
    torch.testing.assert_close(attn.proj.weight.detach(), proj_before * scale, rtol=1e-12, atol=0)
    v = slice(2 * inner, 3 * inner)
    column_scale = attn.qkv.weight.detach()[:inner] / qkv_before[:inner]  # the norm1 fold, per column
    torch.testing.assert_close(attn.qkv.weight.detach()[v], qkv_before[v] * column_scale[:1] / scale[:, None],
                               rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(attn.qkv.bias.detach()[v], bias_before[v] / scale, rtol=1e-12, atol=0)
    torch.testing.assert_close(attn.qkv.bias.detach()[:2 * inner], bias_before[:2 * inner], rtol=0, atol=0)


def test_a_norm_without_affine_parameters_is_refused():
    model = make_model(dtype=D)
    stats = _stats(model)
    width = model.encoder.blocks[0].norm1.normalized_shape
    model.encoder.blocks[0].norm1 = torch.nn.LayerNorm(width, elementwise_affine=False, dtype=D)
    method = get_method("smoothquant")
    with pytest.raises(QuantizationError, match="encoder.blocks.0.norm1 must be a LayerNorm with weight and bias"):
        method.transform(model, QuantConfig.uniform(w_bits=8, a_bits=8), CalibrationData(act_stats=stats),
                         method.make_options({}))
