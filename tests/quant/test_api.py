"""quantize_ and friends on a toy world model built from the shared Block."""

import json

import pytest
import torch
from torch import nn

from quant_toy import calibration_runner, make_inputs, make_model, relative_error
from wmquant.errors import ConfigError, QuantizationError
from wmquant.quant import (
    ActQuantizer,
    BlockInputRecorder,
    LinearInputRecorder,
    QuantConfig,
    QuantConv1d,
    QuantConv2d,
    QuantLinear,
    QuantScheme,
    calibrate_and_quantize,
    freeze_,
    observe_activations,
    quant_summary,
    quantize_,
    set_quantization_,
)
from wmquant.quant.calibration import layer_input_rows
from wmquant.quant.config import TARGET_PRESETS

D = torch.float64
BLOCK_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def test_quantize_swaps_only_the_default_targets():
    model = make_model()
    quantize_(model, QuantConfig.uniform(w_bits=8, a_bits=8))
    swapped = {n for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    expected = {f"{p}.blocks.{i}.{l}" for p in ("encoder", "predictor") for i in range(2) for l in BLOCK_LINEARS}
    assert swapped == expected
    assert isinstance(model.encoder.patch_embed.proj, nn.Conv2d) and not isinstance(model.encoder.patch_embed.proj, QuantConv2d)
    assert isinstance(model.encoder.blocks[0].attn.q_tap, nn.Identity)
    assert type(model.encoder.blocks[0].norm1) is nn.LayerNorm
    assert sum(isinstance(m, ActQuantizer) for m in model.modules()) == len(expected)


def test_encoder_and_predictor_get_their_own_bits():
    model = make_model()
    config = QuantConfig(encoder=QuantScheme(w_bits=8), predictor=QuantScheme(w_bits=4, a_bits=6, w_group_size=16))
    quantize_(model, config)
    enc = model.encoder.blocks[1].mlp.fc2
    pred = model.predictor.blocks[0].attn.qkv
    assert enc.weight_quantizer.bits == 8 and enc.input_quantizer is None and enc.weight_quantizer.group_size is None
    assert pred.weight_quantizer.bits == 4 and pred.weight_quantizer.group_size == 16 and pred.input_quantizer.bits == 6


def test_identity_scheme_leaves_part_unquantized():
    model = make_model()
    quantize_(model, QuantConfig(encoder=QuantScheme(), predictor=QuantScheme(w_bits=4)))
    assert not any(isinstance(m, QuantLinear) for m in model.encoder.modules())
    assert isinstance(model.predictor.blocks[1].mlp.fc1, QuantLinear)


def test_presets_select_more_and_ignore_selects_less():
    model = make_model()
    config = QuantConfig(
        encoder=QuantScheme(w_bits=8, a_bits=8), predictor=QuantScheme(w_bits=4, a_bits=8, a_granularity="per_token"),
        targets=("blocks", "attention_matmuls", "patch_embed", "action_encoder"),
        ignore=("predictor.blocks.1.*",),
    )
    quantize_(model, config)
    assert isinstance(model.encoder.patch_embed.proj, QuantConv2d)
    assert isinstance(model.action_encoder.patch_embed, QuantConv1d)
    assert model.action_encoder.patch_embed.weight_quantizer.bits == 4  # "other" defaults to the predictor's
    assert not isinstance(model.proprio_encoder.patch_embed, QuantConv1d)
    tap = model.predictor.blocks[0].attn.probs_tap
    assert isinstance(tap, ActQuantizer) and tap.granularity == "per_token"
    assert type(model.predictor.blocks[1].attn.qkv) is nn.Linear
    assert isinstance(model.predictor.blocks[1].attn.q_tap, nn.Identity)


def test_attention_taps_quantize_matmul_inputs():
    model = make_model()
    config = QuantConfig(predictor=QuantScheme(a_bits=4, a_granularity="per_token"), targets=("attention_matmuls",))
    inputs = make_inputs(model)
    reference = model(*inputs)
    quantize_(model, config)
    assert not any(isinstance(m, QuantLinear) for m in model.modules())
    out = model(*inputs)
    assert out.shape == reference.shape and not torch.allclose(out, reference)
    set_quantization_(model, False)
    assert torch.allclose(model(*inputs), reference, atol=1e-5)


def test_bad_targets_and_double_quantization():
    model = make_model()
    with pytest.raises(QuantizationError, match="predictor.blocks.\\*.attn.to_qkv"):
        quantize_(model, QuantConfig(predictor=QuantScheme(w_bits=4), targets=("predictor.blocks.*.attn.to_qkv",)))
    quantize_(model, QuantConfig.uniform(w_bits=4))
    with pytest.raises(QuantizationError, match="already quantized"):
        quantize_(model, QuantConfig.uniform(w_bits=4))
    with pytest.raises(ConfigError):
        QuantConfig(targets="encoder.*")


@pytest.mark.parametrize("settings, message", [
    ({"targets": ("blocks", "")}, "target pattern '' must be a non-empty string"),
    ({"ignore": (None,)}, "target pattern None must be a non-empty string"),
    ({"targets": ()}, "targets is empty"),
    ({"encoder": 4}, "encoder must be a QuantScheme or a mapping, got int"),
    ({"other": "w4"}, "other must be a QuantScheme or a mapping, got str"),
])
def test_a_bad_quant_config_names_its_bad_part(settings, message):
    with pytest.raises(ConfigError, match=message):
        QuantConfig(**settings)
    assert QuantConfig(other=None).other is None and QuantConfig(other={"w_bits": 4}).other == QuantScheme(w_bits=4)


@pytest.mark.parametrize("settings, message", [
    ({"a_bits": 17}, "a_bits=17 is not supported; use an integer 2..8, or 16"),
    ({"w_bits": True}, "w_bits=True is not supported"),
    ({"w_group_size": 0}, "w_group_size: group size 0 is not valid"),
    ({"a_symmetric": "yes"}, "a_symmetric='yes' must be true or false"),
    ({"a_include_zero": 1}, "a_include_zero=1 must be true or false"),
    ({"a_bits": 8, "a_format": "fp8_e4m3", "a_observer": "omse"}, "takes its range from min/max"),
    ({"a_bits": 8, "a_observer": "omse", "a_granularity": "per_token"}, "needs a_granularity='per_tensor'"),
])
def test_a_bad_quant_scheme_names_its_bad_setting(settings, message):
    with pytest.raises(ConfigError, match=message):
        QuantScheme(**settings)


def test_quantwms_weight_denominator_applies_to_minmax_weights_only():
    assert QuantScheme(w_bits=4, quantwm_weight_scale=True).minmax_quantwm_scale
    assert not QuantScheme(w_bits=4, quantwm_weight_scale=True, w_observer="omse").minmax_quantwm_scale
    assert not QuantScheme(w_bits=4).minmax_quantwm_scale
    with pytest.raises(ConfigError, match="quantization scheme must be a mapping, got list"):
        QuantScheme.from_dict([("w_bits", 4)])


@pytest.mark.parametrize("settings, message", [
    ({"targets": "encoder.*"}, "targets must be a list of patterns, got 'encoder.\\*'"),
    ({"ignore": None}, "ignore must be a list of patterns, got None"),
    ({"ignore": 3}, "ignore must be a list of patterns, got 3"),
])
def test_targets_and_ignore_are_lists_of_patterns(settings, message):
    with pytest.raises(ConfigError, match=message):
        QuantConfig(**settings)
    with pytest.raises(ConfigError, match=message):
        QuantConfig.from_dict(settings)


def test_presets_expand_in_ignore_too_and_each_module_gets_its_parts_scheme():
    config = QuantConfig(targets=["blocks", "action_encoder"], ignore=["patch_embed"], encoder={"w_bits": 8},
                         predictor={"w_bits": 4}, other={"w_bits": 6})
    assert config.ignore == TARGET_PRESETS["patch_embed"] and isinstance(config.targets, tuple)
    assert config.scheme_for("encoder.blocks.0.attn.qkv").w_bits == 8
    assert config.scheme_for("predictor.blocks.0.attn.qkv").w_bits == 4
    assert config.scheme_for("action_encoder.patch_embed").w_bits == 6
    # without a scheme of their own, the embeddings that feed the predictor take the predictor's
    assert QuantConfig(predictor={"w_bits": 4}).scheme_for("proprio_encoder.patch_embed").w_bits == 4


def test_activation_range_clips_reach_named_layers_and_unknown_names_are_refused():
    from wmquant.quant.layers import ActRangeClip
    clip = ActRangeClip(clip_min=0.5, clip_max=0.75)
    model = quantize_(make_model(), QuantConfig.uniform(a_bits=8), act_clips={"predictor.blocks.0.mlp.fc1": clip})
    assert model.predictor.blocks[0].mlp.fc1.input_quantizer.range_clip is clip
    assert model.predictor.blocks[0].mlp.fc2.input_quantizer.range_clip is None
    with pytest.raises(QuantizationError, match="not quantized layers: \\['predictor.nowhere'\\]"):
        quantize_(make_model(), QuantConfig.uniform(a_bits=8), act_clips={"predictor.nowhere": clip})
    with pytest.raises(QuantizationError, match="whose input is not quantized"):
        quantize_(make_model(), QuantConfig.uniform(w_bits=4), act_clips={"predictor.blocks.0.mlp.fc1": clip})


def test_nan_weight_refused():
    model = make_model()
    with torch.no_grad():
        model.predictor.blocks[0].mlp.fc1.weight[0, 0] = float("nan")
    with pytest.raises(QuantizationError, match="predictor.blocks.0.mlp.fc1.weight"):
        quantize_(model, QuantConfig.uniform(w_bits=4))


def test_observe_freeze_and_switching():
    model = make_model()
    inputs = make_inputs(model)
    reference = model(*inputs)
    quantize_(model, QuantConfig.uniform(w_bits=8, a_bits=8))
    with pytest.raises(QuantizationError, match="encoder.blocks.0.attn.qkv.input_quantizer"):
        freeze_(model)
    with pytest.raises(QuantizationError, match="no calibrated range"):
        set_quantization_(model, True)
    with observe_activations(model):
        observed = model(*inputs)
    assert torch.equal(observed, reference)  # calibration forwards are float
    freeze_(model)
    set_quantization_(model, True)
    quantized = model(*inputs)
    assert not torch.equal(quantized, reference)
    assert relative_error(quantized, reference) < 0.15
    set_quantization_(model, False)
    assert torch.equal(model(*inputs), reference)


def test_freeze_names_a_quantizer_that_saw_no_data():
    model = make_model()
    quantize_(model, QuantConfig.uniform(w_bits=8, a_bits=8))
    with observe_activations(model):
        model.encoder(make_inputs(model)[0][:, 0])  # only the encoder runs
    with pytest.raises(QuantizationError, match="predictor.blocks.0.attn.qkv.input_quantizer"):
        freeze_(model)


def _part_bits(model, part):
    total_bits = total = 0
    for name, param in getattr(model, part).named_parameters():
        module_name, _, leaf = name.rpartition(".")
        module = getattr(model, part).get_submodule(module_name)
        if isinstance(module, QuantLinear) and module.weight_quantizer is not None and leaf == "weight":
            out_f, in_f = param.shape
            q = module.weight_quantizer
            groups = -(-in_f // q.group_size) if q.group_size else 1
            total_bits += q.bits * param.numel() + 16 * out_f * groups
        else:
            total_bits += 32 * param.numel()
        total += param.numel()
    return total_bits / total


def test_summary_bits():
    model = make_model()
    config = QuantConfig(encoder=QuantScheme(w_bits=8), predictor=QuantScheme(w_bits=4, w_group_size=16))
    quantize_(model, config)
    summary = quant_summary(model)
    assert summary["encoder"]["quantized_layers"] == 8 and summary["predictor"]["quantized_layers"] == 8
    assert summary["encoder"]["weight_bits"] == [8] and summary["predictor"]["weight_bits"] == [4]
    assert summary["encoder"]["avg_bits_per_weight"] == pytest.approx(_part_bits(model, "encoder"))
    assert summary["predictor"]["avg_bits_per_weight"] == pytest.approx(_part_bits(model, "predictor"))
    qkv = model.predictor.blocks[0].attn.qkv  # (3*32, 40): groups of 16 -> 3 per row
    layer_bits = (4 * qkv.weight.numel() + 16 * qkv.out_features * 3) / qkv.weight.numel()
    assert 4 < summary["predictor"]["avg_bits_quantized_weights"] <= layer_bits + 1
    # groups per row: per-channel encoder 1; predictor G16 over inputs 40 (qkv, fc1) .. widest
    widths = [m.in_features for n, m in model.predictor.named_modules() if n.endswith(("qkv", "proj", "fc1", "fc2"))]
    assert summary["encoder"]["groups_per_row"] == {"min": 1, "max": 1}
    assert summary["predictor"]["groups_per_row"] == {"min": -(-min(widths) // 16), "max": -(-max(widths) // 16)}
    json.dumps(summary)


def test_config_round_trip_and_unknown_keys():
    config = QuantConfig(encoder=QuantScheme(w_bits=8, a_bits=8), predictor=QuantScheme(w_bits=4, w_group_size=128),
                         targets=("blocks", "patch_embed"))
    data = json.loads(json.dumps(config.to_dict()))
    assert QuantConfig.from_dict(data) == config
    assert "encoder.patch_embed.proj" in data["targets"]
    with pytest.raises(ConfigError, match="w_bitz"):
        QuantConfig.from_dict({"encoder": {"w_bitz": 4}})
    with pytest.raises(ConfigError, match=r"unknown quantization config key\(s\) \['w_bits'\]"):
        QuantConfig.from_dict({"w_bits": 4})
    with pytest.raises(ConfigError, match="granularity"):
        QuantScheme(a_bits=8, a_granularity="per_channel")
    with pytest.raises(ConfigError, match="observer"):
        QuantScheme(w_observer="percentile")


# ------------------------------------------------------------------------- recorders


def test_block_input_recorder_reservoir_and_masks():
    model = make_model()
    with BlockInputRecorder(model, max_samples=5, seed=3) as recorder:
        calibration_runner(model, calls=4, batch=3)()
    for part in ("encoder", "predictor"):
        assert recorder.num_sequences(part) == 5
    # encoder sees (b*t) images per call: 3 + 6 + 3 + 6 = 18 sequences offered
    assert recorder.reservoirs["encoder"].seen == 18
    calls = recorder.inputs("predictor")
    tokens = {c.x.shape[1]: c for c in calls}
    assert set(tokens) <= {16, 32}
    for n, call in tokens.items():
        assert torch.equal(call.args[0], model.predictor.mask[:n, :n])
    assert sum(c.num_sequences for c in calls) == 5
    handles_before = len(model.encoder.blocks[0]._forward_pre_hooks)
    assert handles_before == 0  # removed on exit
    with BlockInputRecorder(model, max_samples=5, seed=3) as again:
        calibration_runner(model, calls=4, batch=3)()
    assert all(torch.equal(a.x, b.x) for a, b in zip(again.inputs("encoder"), recorder.inputs("encoder")))


def test_block_input_recorder_without_data_raises():
    model = make_model()
    with BlockInputRecorder(model) as recorder:
        pass
    with pytest.raises(QuantizationError, match="no calibration data reached encoder.blocks.0"):
        recorder.check_nonempty()


def test_linear_input_recorder_gram_matches_manual():
    model = make_model(dtype=D)
    names = ["predictor.blocks.0.mlp.fc2", "encoder.patch_embed.proj", "action_encoder.patch_embed"]
    images, proprio, actions = make_inputs(model)
    rows = {}
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, a, n=n: rows.setdefault(n, []).append(layer_input_rows(m, a[0]))) for n in names]
    with LinearInputRecorder(model, names) as recorder:
        model(images, proprio, actions)
    for h in hooks:
        h.remove()
    for name in names:
        x = torch.cat(rows[name])
        assert recorder.rows[name] == x.shape[0]
        assert torch.allclose(recorder.grams[name], x.T @ x, rtol=1e-5)
    # unfolded conv patches reproduce the convolution
    conv = model.encoder.patch_embed.proj
    patches = layer_input_rows(conv, images[:, 0])
    out = patches @ conv.weight.reshape(conv.out_channels, -1).T + conv.bias
    assert torch.allclose(out.reshape(3, 16, -1), conv(images[:, 0]).flatten(2).transpose(1, 2), atol=1e-10)


# ------------------------------------------------------------------------- pipeline


class CountingRunner:
    def __init__(self, model, forwards=True):
        self.calls = 0
        self.inner = calibration_runner(model)
        self.forwards = forwards

    def __call__(self):
        self.calls += 1
        if self.forwards:
            self.inner()


def test_pipeline_rtn_static_activations_runs_calibration_once():
    model = make_model()
    inputs = make_inputs(model)
    runner = CountingRunner(model)
    report = calibrate_and_quantize(model, "rtn", QuantConfig.uniform(w_bits=8, a_bits=8), runner)
    assert runner.calls == 1
    assert all(a.mode == "quant" and a.frozen for a in model.modules() if isinstance(a, ActQuantizer))
    assert report["quant_config"]["encoder"]["w_bits"] == 8
    assert report["summary"]["encoder"]["avg_bits_quantized_weights"] > 8
    assert report["calibration_passes"][0]["observed_calls_min"] >= 1
    json.dumps(report)
    model(*inputs)


def test_pipeline_weight_only_per_token_needs_no_calibration():
    model = make_model()
    runner = CountingRunner(model)
    calibrate_and_quantize(model, "rtn", QuantConfig.uniform(w_bits=4, a_bits=8, a_granularity="per_token"), runner)
    assert runner.calls == 0


@pytest.mark.parametrize("method, config", [
    ("rtn", QuantConfig.uniform(w_bits=8, a_bits=8)),  # static activations: one observing pass
    ("rtn", QuantConfig.uniform(w_bits=4, a_bits=8, a_granularity="per_token")),  # none
    ("gptq", QuantConfig.uniform(w_bits=4)),  # layer inputs only
    ("awq", QuantConfig(predictor=QuantScheme(w_bits=4))),  # block inputs only
])
def test_pipeline_announces_exactly_the_passes_it_runs(method, config):
    model = make_model()
    runner = CountingRunner(model)
    announced: list[list[str]] = []

    def on_passes(passes):
        assert runner.calls == 0  # told before the first pass
        announced.append(passes)

    report = calibrate_and_quantize(model, method, config, runner, on_passes=on_passes)
    assert announced == [[p["purpose"] for p in report["calibration_passes"]]]
    assert runner.calls == len(announced[0])


def test_pipeline_fails_loudly_when_calibration_makes_no_forward():
    for method, config in (("rtn", QuantConfig.uniform(w_bits=8, a_bits=8)), ("awq", QuantConfig.uniform(w_bits=4))):
        model = make_model()
        with pytest.raises(QuantizationError, match="calibration"):
            calibrate_and_quantize(model, method, config, CountingRunner(model, forwards=False))


@pytest.mark.parametrize(
    "method, config, options, stats, match",
    [
        ("nope", QuantConfig.uniform(w_bits=4), {}, None, "unknown quantization method 'nope'; valid: awq, gptq"),
        ("awq", QuantConfig.uniform(w_bits=4, a_bits=8), {}, None, "weight-only"),
        ("smoothquant", QuantConfig.uniform(w_bits=8, a_bits=8), {}, None, "wmquant plan-act"),
        ("smoothquant", QuantConfig.uniform(w_bits=8, a_bits=8), {}, {"encoder.blocks.0.attn.qkv": torch.ones(32)},
         "encoder.blocks.0.mlp.fc1.*wmquant plan-act"),
        ("smoothquant", QuantConfig.uniform(w_bits=8, a_bits=8), {}, {"x": torch.tensor([1.0, float("nan")])}, "NaN"),
        ("omniquant", QuantConfig.uniform(w_bits=4, a_bits=8), {"epochs": 0}, {"encoder.blocks.0.attn.qkv": torch.ones(32)},
         "encoder.blocks.0.mlp.fc1.*wmquant plan-act"),
        ("omse", QuantConfig.uniform(w_bits=4), {"objectiv": "output"}, None, "objectiv"),
        ("omse", QuantConfig.uniform(w_bits=4), {"objective": "kl"}, None, "objective"),
        ("awq", QuantConfig.uniform(w_bits=4), {"n_grid": 0}, None, "n_grid"),
    ],
)
def test_pipeline_rejects_bad_input_before_calibration(method, config, options, stats, match):
    model = make_model()
    runner = CountingRunner(model)
    with pytest.raises(QuantizationError, match=match):
        calibrate_and_quantize(model, method, config, runner, act_stats=stats, method_options=options)
    assert runner.calls == 0


def test_pipeline_rejects_nan_weights_before_calibration():
    model = make_model()
    with torch.no_grad():
        model.encoder.blocks[0].norm1.weight[3] = float("inf")
    runner = CountingRunner(model)
    with pytest.raises(QuantizationError, match="encoder.blocks.0.norm1.weight"):
        calibrate_and_quantize(model, "rtn", QuantConfig.uniform(w_bits=4), runner)
    assert runner.calls == 0


@pytest.mark.parametrize("method, options", [("omniquant", {"epochs": 1, "n_samples": 4}),
                                             ("omse", {"objective": "output"}), ("gptq", {})])
def test_calibration_may_run_in_inference_mode(method, options):
    model = make_model()
    first, second = calibration_runner(model, calls=2), calibration_runner(model, calls=2, seed=20)

    def run():  # a planner that runs partly in inference mode
        with torch.inference_mode():
            first()
        second()

    config = QuantConfig.uniform(w_bits=4, a_bits=8 if method != "gptq" else 16)
    calibrate_and_quantize(model, method, config, run, method_options=options)
    assert torch.isfinite(model(*make_inputs(model))).all()


def test_sixteen_bits_everywhere_is_the_float_model():
    model = make_model()
    inputs = make_inputs(model)
    reference = model(*inputs)
    config = QuantConfig(targets=("blocks", "attention_matmuls", "patch_embed", "action_encoder"))
    quantize_(model, config)
    assert not any(isinstance(m, (QuantLinear, QuantConv1d, QuantConv2d, ActQuantizer)) for m in model.modules())
    assert torch.equal(model(*inputs), reference)
    act = ActQuantizer(16)
    x = torch.randn(3, 4)
    act.set_mode("quant")
    assert act(x) is x
