"""Every method on wmquant's own WorldModel (small vit backend), calibrated through rollouts."""

import pytest
import torch

from quant_toy import relative_error, summed_layer_output_error
from wmquant.quant import (
    ActStatsRecorder,
    QuantConfig,
    QuantConv1d,
    QuantConv2d,
    QuantScheme,
    calibrate_and_quantize,
    get_method,
    set_quantization_,
)
from wmquant.quant.calibration import BlockInputRecorder, CalibrationData

checkpoint = pytest.importorskip("wmquant.models.checkpoint")

D = torch.float64
CONFIG = dict(
    img_size=32, num_hist=2, frameskip=2, proprio_dim=2, action_dim=2, decoder=None,
    encoder=dict(backend="vit", patch_size=8, dim=32, depth=2, heads=4, mlp_ratio=2.0, layerscale_init=1.0),
    predictor=dict(depth=2, heads=4, dim_head=8, mlp_dim=64, dropout=0.0),
)


def _model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    model = checkpoint.build_world_model(CONFIG).to(dtype).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.weight[:2] *= 10  # activation outliers, as in trained ViTs
                module.bias.normal_(0, 0.1)
    return model


def _obs(model, seed, batch=4):
    gen = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    obs = {"visual": torch.rand(batch, 1, 3, 32, 32, generator=gen, dtype=dtype) * 2 - 1,
           "proprio": torch.randn(batch, 1, 2, generator=gen, dtype=dtype)}
    return obs, torch.randn(batch, 3, 4, generator=gen, dtype=dtype)


def _planner_like(model, rollouts=3):
    """Stand-in for CEM planning: rollouts of random action sequences from random observations."""

    def run():
        with torch.no_grad():
            for i in range(rollouts):
                model.rollout(*_obs(model, seed=100 + i))
    return run


def _rollout(model, seed=7):
    with torch.no_grad():
        return model.rollout(*_obs(model, seed))[1]


METHOD_CASES = [
    ("rtn", QuantConfig.uniform(w_bits=8, a_bits=8), {}),
    ("rtn", QuantConfig.uniform(w_bits=4, a_bits=8, w_group_size=16, a_granularity="per_token"), {}),
    ("omse", QuantConfig.uniform(w_bits=4, a_bits=8), {"objective": "output", "clip_steps": 21}),
    ("smoothquant", QuantConfig.uniform(w_bits=8, a_bits=8), {"fc_fc": True}),
    ("awq", QuantConfig.uniform(w_bits=4, w_group_size=16), {"n_samples": 8}),
    ("omniquant", QuantConfig.uniform(w_bits=4, a_bits=8), {"epochs": 1, "n_samples": 4}),
    ("gptq", QuantConfig.uniform(w_bits=4, w_group_size=16), {"n_samples": 8}),
]


@pytest.mark.parametrize("method, config, options", METHOD_CASES, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(METHOD_CASES)])
def test_every_method_quantizes_the_world_model(method, config, options):
    model = _model()
    reference = _rollout(model)
    stats = None
    if get_method(method).needs_act_stats:
        with ActStatsRecorder(model) as recorder:
            _planner_like(model)()
        stats = recorder.stats()
    report = calibrate_and_quantize(model, method, config, _planner_like(model), act_stats=stats, method_options=options)
    assert report["summary"]["encoder"]["quantized_layers"] == 8
    assert report["summary"]["predictor"]["quantized_layers"] == 8
    quantized = _rollout(model)
    assert torch.isfinite(quantized).all()
    assert 0 < relative_error(quantized, reference) < 0.5
    set_quantization_(model, False)
    if method != "gptq":  # GPTQ rounds the float weights themselves; the others leave them equivalent
        assert relative_error(_rollout(model), reference) < 1e-4


def test_presets_reach_patch_embedding_and_action_encoder():
    model = _model()
    config = QuantConfig(encoder=QuantScheme(w_bits=8, a_bits=8), predictor=QuantScheme(w_bits=8, a_bits=8),
                         targets=("blocks", "patch_embed", "action_encoder", "proprio_encoder", "attention_matmuls"))
    calibrate_and_quantize(model, "rtn", config, _planner_like(model))
    assert isinstance(model.encoder.patch_embed.proj, QuantConv2d)
    assert isinstance(model.action_encoder.patch_embed, QuantConv1d)
    assert isinstance(model.proprio_encoder.patch_embed, QuantConv1d)
    assert torch.isfinite(_rollout(model)).all()


def test_recorded_predictor_inputs_carry_the_frame_causal_mask():
    model = _model()
    with BlockInputRecorder(model, parts=("predictor",), max_samples=50) as recorder:
        _planner_like(model)()
    calls = recorder.inputs("predictor")
    assert {c.x.shape[1] for c in calls} == {16, 32}  # windows of 1 and 2 frames of 16 patches
    for call in calls:
        n = call.x.shape[1]
        assert torch.equal(call.args[0], model.predictor.mask[:n, :n])


@pytest.mark.parametrize("method, options", [("smoothquant", {"fc_fc": True}), ("awq", {"clip": False}),
                                             ("omniquant", {"epochs": 0})])
def test_equivalence_transforms_on_the_world_model_float64(method, options):
    model = _model(dtype=D)
    reference = _rollout(model)
    with ActStatsRecorder(model) as recorder, BlockInputRecorder(model, max_samples=8) as blocks:
        _planner_like(model)()
    calib = CalibrationData(block_inputs=blocks.all_inputs(), act_stats=recorder.stats())
    ptq = get_method(method)
    ptq.transform(model, QuantConfig.uniform(w_bits=4, a_bits=8 if ptq.supports_activation_quant else 16), calib,
                  ptq.make_options(options))
    assert relative_error(_rollout(model), reference) < 1e-5


@pytest.mark.parametrize("name", checkpoint.shipped_model_names() or [pytest.param("none", marks=pytest.mark.skip("no shipped model"))])
def test_gptq_beats_rtn_on_a_shipped_model(name):
    config = QuantConfig(predictor=QuantScheme(w_bits=4, w_group_size=128),
                         targets=tuple(f"predictor.blocks.*.{l}" for l in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")))
    errors = {}
    for method in ("rtn", "gptq"):
        model, _ = checkpoint.load_world_model(name)
        reference, _ = checkpoint.load_world_model(name)
        size = model.encoder_img_size

        def runner(m):
            def run():
                gen = torch.Generator().manual_seed(0)
                with torch.no_grad():
                    for _ in range(2):
                        obs = {"visual": torch.rand(4, 1, 3, size, size, generator=gen) * 2 - 1,
                               "proprio": torch.randn(4, 1, m.proprio_encoder.patch_embed.in_channels, generator=gen)}
                        m.rollout(obs, torch.randn(4, m.num_hist + 1, m.action_encoder.patch_embed.in_channels, generator=gen))
            return run

        calibrate_and_quantize(model, method, config, runner(model), method_options={"n_samples": 16} if method == "gptq" else {})
        errors[method] = summed_layer_output_error(model, reference, runner(reference))
    assert errors["gptq"] < errors["rtn"]
