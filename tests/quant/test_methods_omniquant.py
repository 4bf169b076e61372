"""OmniQuant: LET fusion is exact in float; block-wise training lowers every block's loss."""

import pytest
import torch

from quant_toy import calibration_runner, make_inputs, make_model, relative_error
from wmquant.errors import QuantizationError
from wmquant.models.blocks import Block
from wmquant.quant import BlockInputRecorder, QuantConfig, QuantLinear, calibrate_and_quantize, get_method
from wmquant.quant.calibration import CalibrationData
from wmquant.quant.methods._equivalence import fold_norm_into_linear_
from wmquant.quant.stats import ActStatsRecorder

D = torch.float64


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_let_fusion_leaves_block_output_unchanged(qkv_bias):
    torch.manual_seed(0)
    block = Block(24, 4, 48, dim_head=8, qkv_bias=qkv_bias).double().eval()
    with torch.no_grad():
        block.norm1.bias.normal_()
        block.norm2.bias.normal_()
    x = torch.randn(3, 10, 24, dtype=D)
    attend = torch.ones(10, 10, dtype=torch.bool).tril()
    reference = block(x, attend).detach()
    for norm, linear in ((block.norm1, block.attn.qkv), (block.norm2, block.mlp.fc1)):
        scale = torch.rand(24, dtype=D) * 4 + 0.1
        shift = torch.randn(24, dtype=D)
        fold_norm_into_linear_(norm, linear, scale, shift)
    assert block.attn.qkv.bias is not None  # the shift needs a bias; created when absent
    with torch.no_grad():
        assert relative_error(block(x, attend), reference) < 1e-5


def _calib(model, stats=False, samples=6):
    with BlockInputRecorder(model, max_samples=samples) as recorder:
        calibration_runner(model)()
    act_stats = None
    if stats:
        with ActStatsRecorder(model) as rec:
            calibration_runner(model)()
        act_stats = rec.stats()
    return CalibrationData(block_inputs=recorder.all_inputs(), act_stats=act_stats)


def test_training_lowers_each_block_loss():
    model = make_model()
    calib = _calib(model, stats=True)
    method = get_method("omniquant")
    options = method.make_options({"epochs": 6, "batch_size": 2, "lwc_lr": 5e-2, "let_lr": 1e-2})
    config = QuantConfig.uniform(w_bits=3, a_bits=6, a_granularity="per_token", w_group_size=16)
    result = method.transform(model, config, calib, options)
    assert len(result.report) == 4
    for block, losses in result.report.items():
        assert losses["final_loss"] < losses["initial_loss"], block
    ratios = result.weight_qparams["predictor.blocks.1.mlp.fc2"].clip_max
    assert ratios.shape == (model.predictor.blocks[1].mlp.fc2.out_features, 5)  # 80 inputs, groups of 16
    init = torch.sigmoid(torch.tensor(4.0))
    assert not torch.allclose(ratios, torch.full_like(ratios, float(init)))  # clipping was learned


def test_without_training_let_starts_from_smoothquant_and_lwc_from_init():
    model = make_model(dtype=D)
    inputs = make_inputs(model)
    reference = model(*inputs).detach()
    calib = _calib(model, stats=True)
    method = get_method("omniquant")
    result = method.transform(model, QuantConfig.uniform(w_bits=4, a_bits=8), calib, method.make_options({"epochs": 0}))
    assert all(r["let_pairs"] == ["attn.qkv", "mlp.fc1"] for r in result.report.values())
    with torch.no_grad():
        assert relative_error(model(*inputs), reference) < 1e-5  # LET fused: float model unchanged
    clip = result.weight_qparams["encoder.blocks.0.attn.qkv"].clip_max
    assert torch.allclose(clip, torch.sigmoid(torch.tensor(4.0, dtype=D)).expand_as(clip))
    assert all(r["initial_loss"] == pytest.approx(r["final_loss"], rel=1e-6) for r in result.report.values())


def test_pipeline_hands_learned_clipping_to_the_quantizers():
    model = make_model()
    inputs = make_inputs(model)
    reference = model(*inputs).detach()
    report = calibrate_and_quantize(model, "omniquant", QuantConfig.uniform(w_bits=4, w_group_size=16),
                                    calibration_runner(model), method_options={"epochs": 2, "n_samples": 4})
    layer = model.predictor.blocks[0].attn.proj
    assert isinstance(layer, QuantLinear) and layer.weight_quantizer.clip_max is not None
    assert set(report["method_report"]) == {f"{p}.blocks.{i}" for p in ("encoder", "predictor") for i in range(2)}
    assert relative_error(model(*inputs), reference) < 0.5


def test_missing_statistics_key_is_an_error_when_statistics_are_given():
    model = make_model()
    with pytest.raises(Exception, match="wmquant plan-act"):
        calibrate_and_quantize(model, "omniquant", QuantConfig.uniform(w_bits=4), calibration_runner(model),
                               act_stats={"encoder.blocks.0.attn.qkv": torch.ones(32)})


@pytest.mark.parametrize("let, raises", [(None, True), (True, True), (False, False)])
def test_missing_statistics_are_refused_before_calibration_unless_let_is_off(let, raises):
    model = make_model()
    method = get_method("omniquant")
    options = method.make_options({"let": let})
    partial = {"encoder.blocks.0.attn.qkv": torch.ones(32)}
    if raises:
        with pytest.raises(QuantizationError, match="encoder.blocks.0.mlp.fc1"):
            method.check_model(model, QuantConfig.uniform(w_bits=4), options, partial)
    else:
        method.check_model(model, QuantConfig.uniform(w_bits=4), options, partial)


def test_let_is_off_by_default_for_weight_only():
    model = make_model()
    method = get_method("omniquant")
    result = method.transform(model, QuantConfig.uniform(w_bits=4), _calib(model), method.make_options({"epochs": 0}))
    assert all(r["let_pairs"] == [] and len(r["lwc_layers"]) == 4 for r in result.report.values())
    forced = make_model()
    result = method.transform(forced, QuantConfig.uniform(w_bits=4), _calib(forced),
                              method.make_options({"epochs": 0, "let": True}))
    assert all(r["let_pairs"] == ["attn.qkv", "mlp.fc1"] for r in result.report.values())


@pytest.mark.parametrize("options, match", [
    ({"epochs": -1}, "epochs"), ({"lwc_lr": 0.0}, "lwc_lr"), ({"let_lr": -1e-3}, "let_lr"),
    ({"batch_size": 0}, "batch_size"), ({"alpha": 1.5}, "alpha"), ({"weight_decay": -1.0}, "weight_decay"),
    ({"let": "auto"}, "let"), ({"shift_init": "mean"}, "shift_init"), ({"keep_best": 1}, "keep_best"),
])
def test_bad_omniquant_options_are_refused(options, match):
    with pytest.raises(QuantizationError, match=match):
        get_method("omniquant").make_options(options)


def test_each_training_step_follows_the_gradient_of_its_own_call_alone(monkeypatch):
    # Without zero_grad between steps the gradients of earlier calls would add up; Adam's scale
    # invariance hides that in the losses, so each step's gradient is compared with the one of its
    # own loss, taken before the backward pass.
    optimizers, fresh, steps = [], {}, []
    plain_mse_loss = torch.nn.functional.mse_loss

    class CheckedAdamW(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            optimizers.append(self)

        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            for param, expected in zip(params, fresh.pop("grads")):
                assert torch.equal(param.grad, torch.zeros_like(param) if expected is None else expected)
            steps.append(len(optimizers))
            return super().step(closure)

    def mse_loss_with_its_gradient(prediction, target, *args, **kwargs):
        loss = plain_mse_loss(prediction, target, *args, **kwargs)
        if optimizers and loss.requires_grad:
            params = [p for group in optimizers[-1].param_groups for p in group["params"]]
            fresh["grads"] = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return loss

    monkeypatch.setattr(torch.optim, "AdamW", CheckedAdamW)
    monkeypatch.setattr(torch.nn.functional, "mse_loss", mse_loss_with_its_gradient)
    model = make_model(dtype=D)
    calib = _calib(model, stats=True, samples=3)
    method = get_method("omniquant")
    method.transform(model, QuantConfig.uniform(w_bits=3, a_bits=6), calib, method.make_options({"epochs": 2}))
    assert len(optimizers) == 4  # one per block
    assert steps == [block for block in (1, 2, 3, 4) for _ in range(2 * 3)]  # 2 epochs of the 3 recorded calls
