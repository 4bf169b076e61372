"""AWQ: exact scaling equivalence, searches never worse than their starting point, final grid
computed after scaling and clipping."""

import pytest
import torch

from quant_toy import calibration_runner, make_inputs, make_model, relative_error
from wmquant.errors import QuantizationError
from wmquant.quant import BlockInputRecorder, QuantConfig, QuantLinear, QuantScheme, calibrate_and_quantize, get_method
from wmquant.quant.calibration import CalibrationData
from wmquant.quant.methods._blockwise import run_and_capture
from wmquant.quant.methods._equivalence import ScaledActivation
from wmquant.quant.methods.awq import (
    candidate_scale,
    quantize_like_inference,
    scaled_quant_loss,
    search_clip,
    search_scale,
)

D = torch.float64


def _calib(model, samples=8):
    with BlockInputRecorder(model, max_samples=samples) as recorder:
        calibration_runner(model)()
    return CalibrationData(block_inputs=recorder.all_inputs())


def test_awq_scaling_leaves_float_outputs_unchanged():
    model = make_model(dtype=D)
    inputs = make_inputs(model)
    reference = model(*inputs).detach()
    method = get_method("awq")
    report = method.transform(model, QuantConfig.uniform(w_bits=3, w_group_size=16), _calib(model),
                              method.make_options({"clip": False})).report
    ratios = [pair["ratio"] for block in report.values() for pair in block.values()]
    assert len(ratios) == 16 and any(r > 0 for r in ratios)  # some scale actually moved
    assert all(isinstance(b.mlp.act, ScaledActivation) for part in (model.encoder, model.predictor) for b in part.blocks)
    with torch.no_grad():
        assert relative_error(model(*inputs), reference) < 1e-5


def test_chosen_scale_never_worse_than_identity_on_its_loss():
    model = make_model(dtype=D)
    calib = _calib(model)
    block = model.predictor.blocks[0]
    scheme = QuantScheme(w_bits=3, w_group_size=16)
    _, captured = run_and_capture(block, calib.block_inputs["predictor"], ["mlp"])
    inspect = lambda: [block.mlp(x) for x in captured["mlp"].inputs()]  # noqa: E731
    act_mean = captured["mlp"].rows().abs().mean(dim=0)
    with torch.no_grad():
        reference = inspect()
    scale, losses = search_scale(inspect, [(block.mlp.fc1, scheme)], act_mean, n_grid=20)
    loss_identity = scaled_quant_loss(inspect, reference, [(block.mlp.fc1, scheme)], torch.ones_like(act_mean))
    loss_chosen = scaled_quant_loss(inspect, reference, [(block.mlp.fc1, scheme)], scale)
    assert losses["loss_s1"] == pytest.approx(loss_identity)
    assert loss_chosen <= loss_identity
    for ratio in (0.25, 0.5, 0.75):  # the chosen scale is the best of the grid
        assert loss_chosen <= scaled_quant_loss(inspect, reference, [(block.mlp.fc1, scheme)],
                                                candidate_scale(act_mean, ratio)) + 1e-15
    assert torch.equal(candidate_scale(act_mean, 0.0), torch.ones_like(act_mean))


def test_a_scale_replaces_identity_only_on_a_strictly_lower_loss():
    # A zero weight quantizes exactly under every candidate scale, so every loss ties at 0 and the
    # tie rule alone decides: it keeps s = 1.
    linear = torch.nn.Linear(16, 4, bias=False).double()
    torch.nn.init.zeros_(linear.weight)
    x = torch.randn(40, 16, dtype=D, generator=torch.Generator().manual_seed(1))
    act_mean = torch.linspace(0.5, 8.0, 16, dtype=D)
    inspect = lambda: [linear(x)]  # noqa: E731
    scale, losses = search_scale(inspect, [(linear, QuantScheme(w_bits=4))], act_mean, n_grid=4)
    assert losses["loss"] == losses["loss_s1"] == 0.0
    assert losses["ratio"] == 0.0 and torch.equal(scale, torch.ones_like(act_mean))


def test_scaled_quant_loss_restores_weights_and_uses_the_inference_quantizer():
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 8).double()
    before = linear.weight.detach().clone()
    x = torch.randn(50, 32, dtype=D)
    scheme = QuantScheme(w_bits=4, w_group_size=8)
    scale = torch.rand(32, dtype=D) + 0.5
    with torch.no_grad():
        reference = [linear(x)]
    loss = scaled_quant_loss(lambda: [linear(x)], reference, [(linear, scheme)], scale)
    w_hat = quantize_like_inference(before * scale, scheme) / scale
    assert loss == pytest.approx(float((x @ (w_hat - before).T).pow(2).mean()))
    assert torch.equal(linear.weight, before)


def test_clip_search_never_worse_than_no_clipping_per_group():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(12, 40, generator=gen, dtype=D) * torch.rand(12, 40, generator=gen, dtype=D).pow(3)
    x = torch.randn(200, 40, generator=gen, dtype=D)
    scheme = QuantScheme(w_bits=3, w_group_size=16)
    factors = [1.0 - i / 20 for i in range(10)]
    best = search_clip(w, x, scheme, factors, row_chunk=5)

    def group_err_q(w_hat):
        q = w_hat - w
        xs = torch.nn.functional.pad(x, (0, 8)).reshape(200, 3, 16)
        qs = torch.nn.functional.pad(q, (0, 8)).reshape(12, 3, 16)
        return torch.einsum("tgk,ogk->tog", xs, qs).pow(2).mean(0)

    assert (group_err_q(quantize_like_inference(w, scheme, clip=best)) <= group_err_q(quantize_like_inference(w, scheme)) + 1e-15).all()
    assert (best < 1).any()


def test_awq_final_grid_is_computed_after_scaling_and_clipping():
    model = make_model()
    inputs = make_inputs(model)
    reference = model(*inputs).detach()
    config = QuantConfig.uniform(w_bits=4, w_group_size=16)
    report = calibrate_and_quantize(model, "awq", config, calibration_runner(model), method_options={"n_samples": 8})
    for name, layer in model.named_modules():
        if isinstance(layer, QuantLinear):
            clip = layer.weight_quantizer.clip_max
            assert clip is not None and torch.equal(clip, layer.weight_quantizer.clip_min)
            expected = quantize_like_inference(layer.weight.detach(), layer.scheme, clip=clip)
            assert torch.equal(layer.weight_quantizer(layer.weight), expected), name
    assert set(report["method_report"]) == {f"{p}.blocks.{i}" for p in ("encoder", "predictor") for i in range(2)}
    assert relative_error(model(*inputs), reference) < 0.5


def test_awq_not_worse_than_rtn_on_output_at_3_bits():
    errors = {}
    for method in ("rtn", "awq"):
        model = make_model()
        inputs = make_inputs(model, seed=5)
        reference = model(*inputs).detach()
        calibrate_and_quantize(model, method, QuantConfig.uniform(w_bits=3, w_group_size=16), calibration_runner(model))
        errors[method] = relative_error(model(*inputs), reference)
    assert errors["awq"] < errors["rtn"]


def test_clip_search_with_no_shrink_keeps_the_full_range_and_reports_the_mean_ratio():
    ratios = {}
    for max_shrink in (0.0, 0.5):
        model = make_model(dtype=D)
        config = QuantConfig(encoder=QuantScheme(w_bits=3), predictor=QuantScheme(), targets=("encoder.blocks.0.mlp.fc1",))
        report = calibrate_and_quantize(model, "awq", config, calibration_runner(model),
                                        method_options={"pairs": [], "max_shrink": max_shrink})
        clip = model.encoder.blocks[0].mlp.fc1.weight_quantizer.clip_max
        ratios[max_shrink] = clip
        assert report["method_report"]["encoder.blocks.0"]["clip"]["mlp.fc1"] == pytest.approx(clip.mean().item(), rel=1e-12)
    assert torch.all(ratios[0.0] == 1.0)  # the only candidate is f = 1
    assert torch.all(ratios[0.5] >= 0.55) and torch.any(ratios[0.5] < 1.0)  # f = 1, 0.95, ..., 0.55


@pytest.mark.parametrize("options, match", [
    ({"max_shrink": 1.0}, "max_shrink"), ({"max_shrink": -0.1}, "max_shrink"), ({"n_grid": 0}, "n_grid"),
    ({"clip_grid": 0}, "clip_grid"), ({"pairs": ["qk"]}, "pairs"), ({"clip_qk": "no"}, "clip_qk"),
])
def test_bad_awq_options_are_refused(options, match):
    with pytest.raises(QuantizationError, match=match):
        get_method("awq").make_options(options)
