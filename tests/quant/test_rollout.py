"""Rollout-aware calibration (method rollout): the horizon-wide rollout loss decreases, the learned
clipping reaches the quantizers, and the float weights are left as they were."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch

from wmquant.quant import QuantConfig, QuantScheme, calibrate_and_quantize, qmath
from wmquant.errors import QuantizationError
from wmquant.quant.api import act_quantizers, set_quantization_
from wmquant.quant.config import QuantConfigError
from wmquant.quant.layers import QuantLinear
from wmquant.quant.methods._rollouts import RolloutReplay, rollout_loss
from wmquant.quant.recorders import CalibrationData, RolloutRecorder

from test_mixed import D, _planner_like_runner, _world_model


def test_the_rollout_loss_decreases_and_the_clipping_is_used():
    model = _world_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = QuantConfig.uniform(w_bits=3, a_bits=8, a_granularity="per_token")
    report = calibrate_and_quantize(model, "rollout", config, _planner_like_runner(model),
                                    method_options={"epochs": 15, "lr": 2e-2})
    losses = report["method_report"]["loss_by_epoch"]
    assert len(losses) == 16 and losses[-1] < 0.9 * losses[0]
    layers = report["method_report"]["layers"]
    # replayed from the recorded observations: the encoder's Linears are learned with the predictor's
    assert report["method_report"]["through_encoder"] and report["method_report"]["encoder_frames"] == 16
    assert any(n.startswith("encoder.") for n in layers) and any(n.startswith("predictor.") for n in layers)
    # the float weights are unchanged; the learned factors sit in the weight quantizers
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
    qkv = model.predictor.blocks[0].attn.qkv
    assert isinstance(qkv, QuantLinear) and qkv.weight_quantizer.clip_max is not None
    assert float(qkv.weight_quantizer.clip_max.min()) < 0.982  # moved from the initial sigmoid(4)
    assert float(model.encoder.blocks[0].mlp.fc1.weight_quantizer.clip_max.min()) < 0.982


def _encoder_only_w3():
    """3-bit weights in the encoder only: its damage reaches the planner only through the start latents."""
    return QuantConfig(encoder=QuantScheme(w_bits=3), predictor=QuantScheme())


def test_an_encoder_only_quantization_is_learned_from_the_replay_through_the_encoder():
    model = _world_model()
    with torch.no_grad():  # the random block's residual branches outweigh the patch embedding, as in a trained ViT
        for layer in (model.encoder.blocks[0].attn.proj, model.encoder.blocks[0].mlp.fc2):
            layer.weight.mul_(30)
    report = calibrate_and_quantize(model, "rollout", _encoder_only_w3(), _planner_like_runner(model),
                                    method_options={"epochs": 10, "lr": 5e-2})["method_report"]
    assert report["layers"] and all(n.startswith("encoder.") for n in report["layers"])
    assert report["loss_by_epoch"][0] > 1e-4 and report["kept_loss"] < 0.8 * report["loss_by_epoch"][0]


def test_without_the_encoder_the_replay_starts_from_the_recorded_latents():
    model = _world_model()
    report = calibrate_and_quantize(model, "rollout", QuantConfig.uniform(w_bits=3), _planner_like_runner(model),
                                    method_options={"epochs": 1, "encoder": False})["method_report"]
    assert not report["through_encoder"] and report["encoder_not_replayed"] == "not asked (encoder=false)"
    assert report["layers"] and not any(n.startswith(("encoder.", "proprio_encoder.")) for n in report["layers"])
    assert any(n.startswith("encoder.") for n in report["fixed_layers"])
    # an encoder-only quantization is then invisible: nothing to learn, a zero loss
    model = _world_model()
    report = calibrate_and_quantize(model, "rollout", _encoder_only_w3(), _planner_like_runner(model),
                                    method_options={"epochs": 1, "encoder": False})["method_report"]
    assert report["layers"] == [] and report["loss_by_epoch"] == [0.0]


def test_rollouts_from_latents_that_were_never_encoded_are_replayed_from_the_latents():
    model = _world_model()
    gen = torch.Generator().manual_seed(2)

    def latents_only():
        z0 = {"visual": torch.randn(8, 1, 4, 8, generator=gen, dtype=D), "proprio": torch.randn(8, 1, 10, generator=gen, dtype=D)}
        with torch.no_grad():
            model.rollout_latent(z0, torch.randn(8, 3, 2, generator=gen, dtype=D))

    report = calibrate_and_quantize(model, "rollout", QuantConfig.uniform(w_bits=3), latents_only,
                                    method_options={"epochs": 1})
    assert not report["method_report"]["through_encoder"]
    assert "have no observations" in report["method_report"]["encoder_not_replayed"]
    assert report["calibration_passes"][0]["rollout_groups_with_observations"] == 0


def test_the_loss_counts_every_step_and_the_cost():
    model = _world_model()
    gen = torch.Generator().manual_seed(3)
    obs = {"visual": torch.rand(4, 1, 3, 16, 16, generator=gen, dtype=torch.float64) * 2 - 1,
           "proprio": torch.randn(4, 1, 2, generator=gen, dtype=torch.float64)}
    z0 = model.encode_obs(obs)
    act = torch.randn(4, 3, 2, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        reference = model.rollout_latent(z0, act)
        assert float(rollout_loss(model, z0, act, reference, 1.0)) == 0.0
        moved = {k: v.clone() for k, v in reference.items()}
        moved["visual"][:, 1] += 0.1  # an error in an intermediate step only
        assert float(rollout_loss(model, z0, act, moved, 0.0)) > 0.0


class _FixedRollout:
    """Stands in for a world model whose rollout gives fixed latents."""

    def __init__(self, latents):
        self.latents = latents

    def rollout_latent(self, z0, act):
        return self.latents


def _final_latents_moved(reference, move):
    got = {k: v.clone() for k, v in reference.items()}
    got["visual"][:, -1] = move(got["visual"][:, -1])
    return got


def test_the_centered_cost_term_ignores_a_shift_common_to_the_groups_costs_and_scales_by_the_given_spread():
    gen = torch.Generator().manual_seed(5)
    visual = torch.randn(6, 3, 2, 4, generator=gen, dtype=torch.float64)
    visual[:, -1, :, 3] = 0.0  # the final latents differ only in dims 0-2
    reference = {"visual": visual, "proprio": torch.randn(6, 3, 1, 2, generator=gen, dtype=torch.float64)}
    goal = visual[:1, -1:]
    c_ref = (visual[:, -1:] - goal).pow(2).flatten(1).sum(dim=1)

    def loss(got, cost_weight, scale):
        return float(rollout_loss(_FixedRollout(got), None, None, reference, cost_weight, scale))

    # every final latent moved along an unused dimension: each cost grows by the same 2 x 0.3^2
    shifted = _final_latents_moved(reference, lambda z: z + torch.tensor([0, 0, 0, 0.3], dtype=torch.float64))
    latent_only = loss(shifted, 0.0, 1.0)
    assert latent_only > 0
    assert loss(shifted, 1.0, 1.0) == pytest.approx(latent_only, abs=1e-12)  # no ranking changed
    relative = (2 * 0.3 ** 2) ** 2 / float(c_ref.pow(2).mean())  # the relative term counts the shift
    assert loss(shifted, 1.0, None) - latent_only == pytest.approx(relative, rel=1e-10)
    # every final latent pulled towards the goal by a: costs a^2 c_ref, so d = (a^2 - 1) c_ref
    a, scale = 0.8, 2.5
    pulled = _final_latents_moved(reference, lambda z: goal[:, 0] + a * (z - goal[:, 0]))
    expected = (a * a - 1) ** 2 * float(c_ref.var(unbiased=False)) / scale
    assert loss(pulled, 1.0, scale) - loss(pulled, 0.0, scale) == pytest.approx(expected, rel=1e-10)


def test_the_centered_cost_term_is_scaled_by_fp_s_mean_cost_spread_and_trains():
    model = _world_model()
    config = QuantConfig.uniform(w_bits=3, a_bits=8, a_granularity="per_token")
    recorder = RolloutRecorder(model, max_sequences=16, group=4, max_frames=8)
    _planner_like_runner(model)()
    recorder.remove()
    calib = CalibrationData(rollouts=recorder.groups, encoder_frames=recorder.frames())
    replay = RolloutReplay(model, calib, 1.0, 1.0, True, cost_term="centered")
    final = [ref["visual"][:, -1:] for ref in replay.references]  # the goal: the first sequence's final latent
    spreads = [float((z - z[:1]).pow(2).flatten(1).sum(dim=1).var(unbiased=False)) for z in final]
    assert len(spreads) > 1 and replay.centered_cost_scale == pytest.approx(sum(spreads) / len(spreads))
    assert RolloutReplay(model, calib, 1.0, 1.0, True).centered_cost_scale is None
    report = calibrate_and_quantize(model, "rollout", config, _planner_like_runner(model),
                                    method_options={"epochs": 15, "lr": 2e-2, "cost_term": "centered"})
    losses = report["method_report"]["loss_by_epoch"]
    assert losses[-1] < 0.9 * losses[0]
    for method in ("rollout", "mixed"):
        with pytest.raises(QuantConfigError, match=r"cost_term='ranked' is unknown; valid: relative, centered"):
            calibrate_and_quantize(_world_model(), method, config, _planner_like_runner(model),
                                   method_options={"cost_term": "ranked"})


def test_rollouts_recorded_under_inference_mode_can_be_trained_on():
    model = _world_model()
    runner = _planner_like_runner(model)

    def planner_in_inference_mode():
        with torch.inference_mode():
            runner()

    report = calibrate_and_quantize(model, "rollout", QuantConfig.uniform(w_bits=4), planner_in_inference_mode,
                                    method_options={"epochs": 1})
    assert len(report["method_report"]["loss_by_epoch"]) == 2


def test_static_input_ranges_are_learned_from_the_omse_factor_and_reach_the_quantizers():
    model = _world_model()
    config = QuantConfig.uniform(a_bits=4)  # activations only: the learned ranges are all there is to learn
    report = calibrate_and_quantize(model, "rollout", config, _planner_like_runner(model),
                                    method_options={"epochs": 8, "lr": 5e-2})
    method = report["method_report"]
    ranges = method["activation_ranges"]
    assert method["layers"] == [] and ranges and any(n.startswith("encoder.") for n in ranges)
    # started at OMSE's MSE-optimal shrink factor, not at the weight clipping's 0.982
    assert min(r["initial_factor"] for r in ranges.values()) < 0.9
    assert method["kept_loss"] < 0.9 * method["loss_by_epoch"][0]
    # the learned factors sit on the final quantizers' observed ranges
    layer = model.predictor.blocks[0].mlp.fc1
    clip = layer.input_quantizer.range_clip
    assert (clip.clip_min, clip.clip_max) == (ranges["predictor.blocks.0.mlp.fc1"]["clip_min"],
                                              ranges["predictor.blocks.0.mlp.fc1"]["clip_max"])
    q = layer.input_quantizer
    expected = qmath.qparams_from_range(q.running_min * clip.clip_min, q.running_max * clip.clip_max, 4, False)
    assert torch.equal(q.scale, expected[0]) and torch.equal(q.zero_point, expected[1])


def test_without_learned_ranges_the_observed_ranges_stay_minmax():
    model = _world_model()
    report = calibrate_and_quantize(model, "rollout", QuantConfig.uniform(a_bits=4), _planner_like_runner(model),
                                    method_options={"epochs": 1, "activation_ranges": False})
    assert report["method_report"]["activation_ranges"] == {}
    assert all(q.range_clip is None for q in act_quantizers(model))


def test_the_replay_through_the_encoder_also_scores_the_recorded_frames():
    """The third term: encoder_weight x the recorded frames' relative latent error."""
    losses = {}
    for weight in (0.0, 1.0, 2.0):
        model = _world_model()
        report = calibrate_and_quantize(model, "rollout", _encoder_only_w3(), _planner_like_runner(model),
                                        method_options={"epochs": 0, "encoder_weight": weight})["method_report"]
        losses[weight] = report["loss_by_epoch"][0]
    frames_term = losses[1.0] - losses[0.0]
    assert frames_term > 1e-6
    assert math.isclose(losses[2.0] - losses[0.0], 2 * frames_term, rel_tol=1e-6)


def _model_with_outlier_channels():
    """Channels as trained ViTs' norms give them: one 30x wider than the others, one offset far from
    zero. A per-tensor input range that covers both leaves the other channels a few levels; a
    per-channel scale fixes the first, only a shift the second."""
    model = _world_model()
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith(("norm1", "norm2")):
                module.weight[1] *= 30
                module.bias[2] += 30
    return model


def _rollout_of(model):
    gen = torch.Generator().manual_seed(7)
    obs = {"visual": torch.rand(4, 1, 3, 16, 16, generator=gen, dtype=D) * 2 - 1,
           "proprio": torch.randn(4, 1, 2, generator=gen, dtype=D)}
    with torch.no_grad():
        return model.rollout_latent(model.encode_obs(obs), torch.randn(4, 3, 2, generator=gen, dtype=D))["visual"]


def test_let_starts_better_than_none_learns_and_folds_exactly_into_the_float_model():
    config = QuantConfig.uniform(w_bits=4, a_bits=4)  # per-tensor inputs, where an outlier channel hurts
    start = {}
    for let in (False, True):
        model = _model_with_outlier_channels()
        original = copy.deepcopy(model)
        report = calibrate_and_quantize(model, "rollout", config, _planner_like_runner(model),
                                        method_options={"epochs": 3, "let": let, "keep_best": False})["method_report"]
        start[let] = report["loss_by_epoch"][0]
    # every replayed norm -> qkv / fc1 pair, encoder and predictor
    assert set(report["let"]) == {f"{part}.blocks.{i}.{linear}" for part, depth in (("encoder", 1), ("predictor", 2))
                                  for i in range(depth) for linear in ("attn.qkv", "mlp.fc1")}
    assert report["let"]["predictor.blocks.0.attn.qkv"]["norm"] == "predictor.blocks.0.norm1"
    # SmoothQuant's migration and the midpoint shift start the replay with less damage
    assert start[True] < 0.7 * start[False]
    # the scales and shifts are trained with the clipping ...
    assert all(pair["scale_change"] > 0 for pair in report["let"].values())
    # ... and folded into the float norm and Linear: with quantization off, the model computes as before
    assert not torch.equal(model.predictor.blocks[0].norm1.weight, original.predictor.blocks[0].norm1.weight)
    new_bias = model.predictor.blocks[0].attn.qkv.bias  # the shift moved into a new bias, trainable as its weight
    assert new_bias is not None and original.predictor.blocks[0].attn.qkv.bias is None and new_bias.requires_grad
    set_quantization_(model, False)
    torch.testing.assert_close(_rollout_of(model), _rollout_of(original), rtol=1e-9, atol=1e-9)


def test_let_cannot_follow_a_rotation_or_run_without_quantized_activations():
    model = _world_model()
    with pytest.raises(QuantizationError, match="folds per-channel scales"):
        calibrate_and_quantize(model, ["rotate", "rollout"], QuantConfig.uniform(w_bits=4, a_bits=4), lambda: None,
                               method_options={"rollout": {"let": True}})
    with pytest.raises(QuantConfigError, match="let=true"):
        calibrate_and_quantize(model, "rollout", QuantConfig.uniform(w_bits=4), lambda: None,
                               method_options={"let": True})


def test_a_failure_while_learning_let_leaves_the_model_as_it_came(monkeypatch):
    model = _model_with_outlier_channels()
    original = copy.deepcopy(model)

    def broken_optimizer(*args, **kwargs):
        raise RuntimeError("optimizer failed")

    monkeypatch.setattr(torch.optim, "Adam", broken_optimizer)
    with pytest.raises(RuntimeError, match="optimizer failed"):
        calibrate_and_quantize(model, "rollout", QuantConfig.uniform(w_bits=4, a_bits=4), _planner_like_runner(model),
                               method_options={"epochs": 1, "let": True})
    assert model.predictor.blocks[0].attn.qkv.bias is None  # no bias left behind
    assert not any("parametrizations" in name for name, _ in model.named_modules())
    state, before = model.state_dict(), original.state_dict()
    assert set(state) == set(before) and all(torch.equal(state[name], before[name]) for name in before)


@pytest.mark.parametrize("method", ["rollout", "mixed", "omniquant"])
def test_the_methods_own_computation_shows_a_progress_bar_when_asked(method, capsys):
    model = _world_model()
    options = {} if method == "mixed" else {"epochs": 1}
    config = QuantConfig.uniform(w_bits=4)
    calibrate_and_quantize(model, method, config, _planner_like_runner(model), method_options=options, progress=True)
    assert re.search(rf"{method}:\s+\d+%.*\| *\d+/\d+ ", capsys.readouterr().err)  # tqdm's line
    quiet = _world_model()
    calibrate_and_quantize(quiet, method, config, _planner_like_runner(quiet), method_options=options)
    assert f"{method}:" not in capsys.readouterr().err
