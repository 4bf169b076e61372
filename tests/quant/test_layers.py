"""Quantized layers: same parameters, correct fake quantization, observer states, weight cache."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wmquant.errors import QuantizationError
from wmquant.quant import qmath
from wmquant.quant.config import QuantScheme
from wmquant.quant.layers import (ActQuantizer, ActRangeClip, QuantConv1d, QuantConv2d, QuantLinear, WeightQParams,
                                  WeightQuantizer, input_fake_quant_hook)

D = torch.float64


def test_quant_linear_keeps_parameters_and_state_dict_keys():
    linear = nn.Linear(6, 4).double()
    q = QuantLinear.from_float(linear, QuantScheme(w_bits=4, a_bits=8), "layer")
    assert q.weight is linear.weight and q.bias is linear.bias
    assert list(q.state_dict()) == list(linear.state_dict())


def test_quant_linear_forward_matches_manual_fake_quant():
    torch.manual_seed(0)
    linear = nn.Linear(12, 5).double()
    scheme = QuantScheme(w_bits=3, a_bits=4, w_group_size=5, a_granularity="per_token")
    q = QuantLinear.from_float(linear, scheme, "layer")
    q.input_quantizer.set_mode("quant")
    x = torch.randn(2, 7, 12, dtype=D)
    expected = F.linear(qmath.per_token_fake_quantize(x, 4), qmath.fake_quantize_weight(linear.weight, 3, 5), linear.bias)
    assert torch.equal(q(x), expected)


def test_weight_cache_follows_in_place_edits():
    torch.manual_seed(1)
    linear = nn.Linear(8, 3).double()
    q = QuantLinear.from_float(linear, QuantScheme(w_bits=4), "layer")
    x = torch.randn(5, 8, dtype=D)
    with torch.no_grad():
        first = q(x)
        q.weight.mul_(3.0)  # a later transform edits the weight in place
        second = q(x)
    expected = F.linear(x, qmath.fake_quantize_weight(linear.weight.detach(), 4, None), linear.bias)
    assert torch.allclose(second, expected, rtol=0, atol=1e-12)
    assert not torch.allclose(first, second)


def test_fixed_qparams_and_clip_ratios():
    w = torch.tensor([[4.0, -2.0, 1.0, 0.5]], dtype=D)
    quantizer = WeightQuantizer(QuantScheme(w_bits=4, w_group_size=2))
    quantizer.load_qparams(WeightQParams(scale=torch.tensor([[1.0, 0.25]], dtype=D)), w)
    assert quantizer(w).tolist() == [[4.0, -2.0, 1.0, 0.5]]
    quantizer.load_qparams(WeightQParams(clip_max=torch.tensor([[0.5, 1.0]], dtype=D),
                                         clip_min=torch.tensor([[0.5, 1.0]], dtype=D)), w)
    # group 0: absmax 4 * 0.5 = 2 -> scale 2/7; 4 clamps to 7 * 2/7 = 2
    assert quantizer(w)[0, 0].item() == pytest.approx(2.0)
    with pytest.raises(QuantizationError, match="shape"):
        quantizer.load_qparams(WeightQParams(scale=torch.ones(1, 3, dtype=D)), w)
    with pytest.raises(QuantizationError):
        WeightQParams(scale=torch.ones(1, 2), clip_max=torch.ones(1, 2))


def test_omse_weight_observer_equals_explicit_search():
    torch.manual_seed(2)
    w = torch.randn(4, 20, dtype=D) ** 3
    quantizer = WeightQuantizer(QuantScheme(w_bits=3, w_group_size=8, w_observer="omse"))
    ratios = qmath.search_weight_clip_ratios(w, 3, 8)
    assert torch.equal(quantizer(w), qmath.fake_quantize_weight(w, 3, 8, clip_max=ratios, clip_min=ratios))


def test_quant_conv2d_quantizes_rows_of_flattened_kernels_and_tokens_over_channels():
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 4, 2, 2).double()
    scheme = QuantScheme(w_bits=4, a_bits=4, a_granularity="per_token")
    q = QuantConv2d.from_float(conv, scheme, "conv")
    x = torch.randn(2, 3, 4, 4, dtype=D)
    w_hat = qmath.fake_quantize_weight(conv.weight.reshape(4, -1), 4, None).reshape(conv.weight.shape)
    x_hat = qmath.per_token_fake_quantize(x.movedim(1, -1), 4).movedim(-1, 1)
    assert torch.equal(q(x), F.conv2d(x_hat, w_hat, conv.bias, stride=2))


def test_quant_conv1d_kernel_one_equals_linear_per_position():
    torch.manual_seed(4)
    conv = nn.Conv1d(5, 3, 1).double()
    q = QuantConv1d.from_float(conv, QuantScheme(w_bits=3), "conv")
    x = torch.randn(2, 5, 6, dtype=D)
    w_hat = qmath.fake_quantize_weight(conv.weight[:, :, 0], 3, None)
    expected = (x.transpose(1, 2) @ w_hat.T + conv.bias).transpose(1, 2)
    assert torch.allclose(q(x), expected, atol=1e-12)


def test_act_quantizer_per_tensor_lifecycle():
    act = ActQuantizer(4, granularity="per_tensor", name="enc.act")
    x1 = torch.tensor([[-1.0, 2.0]], dtype=D)
    x2 = torch.tensor([[0.5, 14.0]], dtype=D)
    assert act(x1) is x1  # off
    with pytest.raises(QuantizationError, match="enc.act"):
        act.set_mode("quant")
    with pytest.raises(QuantizationError, match="enc.act.*no calibration data"):
        act.freeze()
    act.set_mode("observe")
    assert torch.equal(act(x1), x1) and torch.equal(act(x2), x2)
    act.freeze()
    assert act.scale.item() == pytest.approx(1.0)  # running range [-1, 14] over both calls -> 15/15
    assert act.zero_point.item() == 1.0
    act.set_mode("quant")
    assert act(torch.tensor([2.4, 20.0, -3.0], dtype=D)).tolist() == pytest.approx([2.0, 14.0, -1.0])
    with pytest.raises(QuantizationError, match="mode"):
        act.set_mode("calibrate")


def test_act_quantizer_per_token_needs_no_calibration():
    act = ActQuantizer(4, granularity="per_token")
    assert not act.needs_calibration
    act.set_mode("quant")
    x = torch.tensor([[-5.0, 0.0, 2.5, 10.0]], dtype=D)
    assert act(x).tolist() == [[-5.0, 0.0, 2.0, 10.0]]


def test_act_quantizer_omse_freeze_not_worse_than_minmax_on_its_sample():
    torch.manual_seed(5)
    act = ActQuantizer(4, observer="omse", sample_size=4096)
    act.set_mode("observe")
    for _ in range(3):
        x = torch.randn(64, 32, dtype=D)
        x[0, 0] = 30.0
        act(x)
    sample = act.sample.clone()
    act.freeze()
    minmax = qmath.qparams_from_range(act.running_min, act.running_max, 4, False)
    err = lambda s, z: (qmath.fake_quantize(sample, s, z, 4, False) - sample).pow(2).mean()  # noqa: E731
    assert err(act.scale, act.zero_point) < err(*minmax)


def test_a_range_clip_scales_the_observed_range_and_replaces_the_omse_search():
    torch.manual_seed(5)
    act = ActQuantizer(4, observer="omse", sample_size=4096)
    act.set_mode("observe")
    x = torch.randn(64, 32, dtype=D)
    x[0, 0] = 30.0
    act(x)
    act.load_range_clip(ActRangeClip(clip_min=0.5, clip_max=0.25))
    act.freeze()
    expected = qmath.qparams_from_range(act.running_min * 0.5, act.running_max * 0.25, 4, False)
    assert torch.equal(act.scale, expected[0]) and torch.equal(act.zero_point, expected[1])
    assert "range clip 0.500/0.250" in repr(act)


def test_a_range_clip_needs_a_static_integer_range():
    with pytest.raises(QuantizationError, match="no static integer range"):
        ActQuantizer(4, granularity="per_token", name="tok").load_range_clip(ActRangeClip(0.5, 0.5))
    with pytest.raises(QuantizationError, match="no static integer range"):
        ActQuantizer(8, number_format="fp8_e4m3").load_range_clip(ActRangeClip(0.5, 0.5))
    for bad in (0.0, 1.5, True):
        with pytest.raises(QuantizationError, match="must be in"):
            ActRangeClip(clip_min=bad, clip_max=0.5)


def test_calibrated_under_inference_mode_then_differentiable_for_a_gd_planner():
    torch.manual_seed(6)
    linear = nn.Linear(8, 4)
    q = QuantLinear.from_float(linear, QuantScheme(w_bits=4, a_bits=8), "layer")
    with torch.inference_mode():
        q.input_quantizer.set_mode("observe")
        q(torch.randn(16, 8))
        q.input_quantizer.freeze()
        q.input_quantizer.set_mode("quant")
        q(torch.randn(2, 8))  # fills the weight cache in inference mode
    x = torch.randn(3, 8, requires_grad=True)
    q(x).sum().backward()
    # straight-through: inside the calibrated range the gradient is that of the float layer
    inside = (x.detach() > q.input_quantizer.running_min) & (x.detach() < q.input_quantizer.running_max)
    expected = q.weight_quantizer(q.weight).sum(dim=0).expand(3, 8)
    assert torch.allclose(x.grad[inside], expected[inside])


def test_weight_quantizer_keeps_the_qparams_it_quantized_with():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(3, 8, generator=gen, dtype=D)
    quantizer = WeightQuantizer(QuantScheme(w_bits=4, w_group_size=4))
    quantizer(w)
    scale, zero = qmath.weight_qparams(w, 4, 4)
    assert torch.equal(quantizer.scale, scale) and torch.equal(quantizer.zero_point, zero)
    fixed = WeightQuantizer(QuantScheme(w_bits=4, w_group_size=4))
    fixed.load_qparams(WeightQParams(scale=torch.full((3, 2), 0.5, dtype=D)), w)  # no zero point given: 0
    assert torch.equal(fixed.zero_point, torch.zeros(3, 2, dtype=D))
    fixed(w)
    assert torch.equal(fixed.scale, torch.full((3, 2), 0.5, dtype=D))  # kept, not recomputed


def test_weight_cache_is_reused_until_the_weight_changes():
    linear = nn.Linear(8, 3).double()
    q = QuantLinear.from_float(linear, QuantScheme(w_bits=4), "layer")
    calls = []
    original = q.weight_quantizer._fake_quantize
    q.weight_quantizer._fake_quantize = lambda w: calls.append(1) or original(w)
    x = torch.randn(5, 8, dtype=D)
    with torch.no_grad():
        q(x)
        q(x)
        assert len(calls) == 1
        q.weight.add_(0.1)
        q(x)
    assert len(calls) == 2


@pytest.mark.parametrize("bits, number_format", [(4, "int"), (8, "fp8_e4m3"), (4, "mxfp4")])
def test_dynamic_activation_quantizers_pass_gradients_straight_through(bits, number_format):
    quantizer = ActQuantizer(bits, granularity="per_token", number_format=number_format)
    x = torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(3), dtype=D, requires_grad=True)
    out = quantizer(x)
    assert not torch.equal(out, x)
    out.sum().backward()
    # 1 through the rounding (its own gradient would be 0), 0 only where a float format saturates
    assert set(x.grad.unique().tolist()) <= {0.0, 1.0} and (x.grad == 1).float().mean() > 0.8
    if number_format == "int":
        assert torch.equal(x.grad, torch.ones_like(x))


def test_omse_activation_sample_weighs_each_batch_by_its_size():
    quantizer = ActQuantizer(4, observer="omse", sample_size=100)
    quantizer.set_mode("observe")
    quantizer(torch.ones(50, dtype=D))
    assert quantizer.sample.tolist() == [1.0] * 100
    quantizer(torch.full((50,), 2.0, dtype=D))  # as many values again: half of the sample
    assert (quantizer.sample == 1.0).sum() == 50 and (quantizer.sample == 2.0).sum() == 50
    quantizer(torch.full((300,), 3.0, dtype=D))  # 300 of 400 values seen: 75 of the sample
    assert (quantizer.sample == 3.0).sum() == 75 and quantizer.sample.numel() == 100
    assert quantizer.values_observed == 400 and quantizer.calls_observed == 3


def test_omse_activation_sample_rounds_the_old_values_share_to_the_nearest_count():
    quantizer = ActQuantizer(4, observer="omse", sample_size=4)
    quantizer.set_mode("observe")
    quantizer(torch.zeros(2, dtype=D))
    quantizer(torch.ones(1, dtype=D))  # 2 of 3 values seen are old: 8/3 = 2.67 of 4 rounds to 3, not 2
    assert (quantizer.sample == 0.0).sum() == 3 and (quantizer.sample == 1.0).sum() == 1


@pytest.mark.parametrize("observer", ["minmax", "omse"])
def test_a_single_activation_value_is_observed(observer):
    quantizer = ActQuantizer(8, observer=observer, sample_size=8)
    quantizer.set_mode("observe")
    quantizer(torch.tensor([-2.0], dtype=D))
    quantizer(torch.tensor([6.0], dtype=D))
    assert quantizer.running_min.item() == -2.0 and quantizer.running_max.item() == 6.0
    assert quantizer.values_observed == 2 and quantizer.calls_observed == 2
    quantizer.freeze()
    assert quantizer.scale.item() > 0


def test_quantizer_state_stays_out_of_the_state_dict():
    linear = nn.Linear(6, 4).double()
    q = QuantLinear.from_float(linear, QuantScheme(w_bits=4, a_bits=8, a_observer="omse"), "layer")
    q.input_quantizer.set_mode("observe")
    q(torch.randn(3, 6, dtype=D))
    q.input_quantizer.freeze()
    q.input_quantizer.set_mode("quant")
    q(torch.randn(3, 6, dtype=D))
    # a quantized model saves as the float one: scales, ranges and samples are derived state
    assert list(q.state_dict()) == list(linear.state_dict())
    ratios = torch.full((4, 1), 0.8, dtype=D)
    q.weight_quantizer.load_qparams(WeightQParams(clip_max=ratios, clip_min=ratios), q.weight)
    q(torch.randn(3, 6, dtype=D))
    assert q.weight_quantizer.clip_max is not None and list(q.state_dict()) == list(linear.state_dict())


def test_a_linear_without_bias_stays_without_bias():
    linear = nn.Linear(6, 4, bias=False).double()
    q = QuantLinear.from_float(linear, QuantScheme(w_bits=4), "layer")
    x = torch.randn(3, 6, dtype=D)
    assert q.bias is None
    assert torch.equal(q(x), x @ qmath.fake_quantize_weight(linear.weight, 4, None).T)


def test_the_training_hook_quantizes_each_token_of_a_batched_input_with_a_gradient():
    linear = nn.Linear(16, 4).double()
    seen = []
    linear.register_forward_pre_hook(input_fake_quant_hook(QuantScheme(a_bits=4, a_granularity="per_token")))
    linear.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(4), dtype=D, requires_grad=True)
    linear(x).sum().backward()
    torch.testing.assert_close(seen[0], qmath.per_token_fake_quantize(x.detach(), 4), rtol=0, atol=0)
    # straight through the rounding: the gradient of sum(W x) with respect to x, not 0
    torch.testing.assert_close(x.grad, (torch.ones(2, 5, 4, dtype=D) @ linear.weight).detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("make, cls", [
    (lambda: nn.Linear(6, 4, bias=False), QuantLinear),
    (lambda: nn.Conv2d(3, 4, 2, 2, bias=False), QuantConv2d),
    (lambda: nn.Conv1d(3, 4, 1, bias=False), QuantConv1d),
])
def test_a_quantized_layer_keeps_the_mode_and_the_missing_bias_of_the_float_layer(make, cls, training):
    layer = make().double().train(training)
    q = cls.from_float(layer, QuantScheme(w_bits=4), "layer")
    assert q.training == training and q.bias is None and q.weight is layer.weight
    shape = {QuantLinear: (3, 6), QuantConv2d: (2, 3, 4, 4), QuantConv1d: (2, 3, 5)}[cls]
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2), dtype=D)
    with torch.no_grad():
        original = layer.weight.clone()
        layer.weight.copy_(q.weight_quantizer(layer.weight))
        expected = layer(x)  # the float layer with the quantized weight, no bias
        layer.weight.copy_(original)
        torch.testing.assert_close(q(x), expected, rtol=0, atol=1e-12)
