"""Mixed precision (method mixed): sensitivity on recorded planning rollouts, a greedy knapsack that
meets its budget, per-layer schemes that quantize_ applies."""

from __future__ import annotations

import functools

import pytest
import torch

from wmquant.errors import QuantizationError
from wmquant.models.checkpoint import build_world_model
from wmquant.quant import QuantConfig, QuantScheme, calibrate_and_quantize
from wmquant.quant.methods.mixed import average_bits, greedy_allocation
from wmquant.quant.methods._rollouts import RolloutReplay
from wmquant.quant.recorders import CalibrationData, RolloutRecorder

D = torch.float64


def _world_model():
    torch.manual_seed(0)
    return build_world_model({
        "img_size": 16, "num_hist": 1, "proprio_dim": 2, "action_dim": 2, "frameskip": 1,
        "encoder": {"backend": "vit", "patch_size": 8, "dim": 16, "depth": 1, "heads": 2, "out_dim": 8},
        "predictor": {"depth": 2, "heads": 2, "dim_head": 8, "mlp_dim": 32}, "decoder": None,
    }).double().eval()


def _planner_like_runner(model, calls=2):
    gen = torch.Generator().manual_seed(1)

    def run():
        for _ in range(calls):
            obs = {"visual": torch.rand(8, 1, 3, 16, 16, generator=gen, dtype=D) * 2 - 1,
                   "proprio": torch.randn(8, 1, 2, generator=gen, dtype=D)}
            with torch.no_grad():
                model.rollout_latent(model.encode_obs(obs), torch.randn(8, 3, 2, generator=gen, dtype=D))
    return run


def test_greedy_allocation_meets_the_budget_and_prefers_sensitive_layers():
    sizes = {"a": 100, "b": 100, "c": 200}
    damage = {"a": {3: 10.0, 4: 5.0, 6: 0.5, 8: 0.4}, "b": {3: 1.0, 4: 0.9, 6: 0.8, 8: 0.7},
              "c": {3: 2.0, 4: 1.0, 6: 0.9, 8: 0.8}}
    bits = greedy_allocation(sizes, damage, (3, 4, 6, 8), budget=4.0)
    assert bits == {"a": 6, "b": 4, "c": 3}  # by damage drop per added bit: a 3->4, a 4->6, then b 3->4
    assert average_bits(bits, sizes) == 4.0  # exactly the budget
    assert bits["a"] > bits["b"]  # the sensitive layer got the bits
    for budget in (3.0, 3.5, 5.0, 8.0):
        assert average_bits(greedy_allocation(sizes, damage, (3, 4, 6, 8), budget), sizes) <= budget


def test_rollouts_are_recorded_from_the_planners_calls():
    model = _world_model()
    recorder = RolloutRecorder(model, max_sequences=16, group=4, max_frames=16)
    _planner_like_runner(model, calls=3)()
    recorder.remove()
    assert "rollout_latent" not in vars(model) and "encode_obs" not in vars(model)
    assert len(recorder.groups) == 4 and recorder.seen == 6
    for group in recorder.groups:
        assert group.actions.shape == (4, 3, 2) and group.z_obs_0["visual"].shape[0] == 4
        # the recorded observations encode to exactly the recorded start latents
        assert group.start_index.tolist() == [0, 1, 2, 3]
        with torch.no_grad():
            z = model.encode_obs(group.observations)
        assert all(torch.equal(z[k][group.start_index], group.z_obs_0[k]) for k in z)
    frames = recorder.frames()
    assert frames["visual"].shape == (16, 1, 3, 16, 16) and frames["proprio"].shape == (16, 1, 2)  # 24 seen, 16 kept


def test_a_group_spanning_two_episodes_keeps_both_starts():
    """As the CEM lays out its samples: each episode's start repeated once per sample, episodes in a row."""
    model = _world_model()
    recorder = RolloutRecorder(model, max_sequences=64, group=4)
    gen = torch.Generator().manual_seed(5)
    obs = {"visual": torch.rand(3, 1, 3, 16, 16, generator=gen, dtype=D) * 2 - 1,
           "proprio": torch.randn(3, 1, 2, generator=gen, dtype=D)}
    with torch.no_grad():
        z = model.encode_obs(obs)
        per_sample = {k: v.repeat_interleave(6, dim=0) for k, v in z.items()}  # 3 episodes x 6 samples
        model.rollout_latent(per_sample, torch.randn(18, 3, 2, generator=gen, dtype=D))
    recorder.remove()
    second = recorder.groups[1]  # rows 4..7: two samples of episode 0, two of episode 1
    assert second.start_index.tolist() == [0, 0, 1, 1]
    torch.testing.assert_close(second.observations["visual"], obs["visual"][:2], rtol=0, atol=0)


def test_mixed_precision_allocates_per_layer_widths_within_the_budget():
    model = _world_model()
    config = QuantConfig.uniform(w_bits=4, a_bits=4, a_granularity="per_token")
    report = calibrate_and_quantize(model, "mixed", config, _planner_like_runner(model),
                                    method_options={"budget": 5.0, "n_sequences": 64})
    allocation = report["method_report"]
    assert allocation["average_weight_bits"] <= 5.0 and allocation["average_activation_bits"] <= 5.0
    widths = {name: m.weight_quantizer.bits for name, m in model.named_modules() if hasattr(m, "weight_quantizer")}
    # replayed from the recorded observations: encoder and predictor are allocated together
    assert allocation["through_encoder"] and widths == allocation["weight_bits"]
    assert len(set(widths.values())) > 1 and allocation["fixed_layers"] == []  # really mixed
    assert set(allocation["average_bits_by_part"]) == {"encoder", "predictor"}
    damage = allocation["weight_damage"]
    assert all(d[3] >= d[8] for d in damage.values())  # more bits, less damage (on these layers)
    # each layer's input is measured quantized alone: 3-bit inputs do more damage than 8-bit ones
    assert sum(d[3] for d in allocation["activation_damage"].values()) > sum(
        d[8] for d in allocation["activation_damage"].values()) > 0


def test_mixed_never_encodes_while_a_layer_outside_the_encoder_is_perturbed(monkeypatch):
    """Perturbing a layer the encoding does not call leaves the encoder's outputs at float, so its
    replays reuse the float start latents; an encoder layer's replays still encode."""
    model = _world_model()
    originals = {name: m.weight.detach().clone() for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    hooks_at_rest = {name: len(model.get_submodule(name)._forward_pre_hooks) for name in originals}
    perturbed_when_encoding = []
    encode = type(model).encode_obs

    @functools.wraps(encode)
    def watched_encode(self, *args, **kwargs):
        changed = {name for name, w in originals.items() if not torch.equal(self.get_submodule(name).weight, w)}
        hooked = {name for name in originals if len(self.get_submodule(name)._forward_pre_hooks) > hooks_at_rest[name]}
        # a measurement quantizes one layer's input (one hook); finding the replayed layers hooks them all
        perturbed_when_encoding.append(changed | (hooked if len(hooked) == 1 else set()))
        return encode(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "encode_obs", watched_encode)
    config = QuantConfig.uniform(w_bits=4, a_bits=4, a_granularity="per_token")
    report = calibrate_and_quantize(model, "mixed", config, _planner_like_runner(model),
                                    method_options={"budget": 5.0, "n_sequences": 64})["method_report"]
    assert report["through_encoder"]
    perturbed = set().union(*perturbed_when_encoding)
    assert perturbed and all(name.startswith(("encoder.", "proprio_encoder.")) for name in perturbed)
    assert any(name.startswith("predictor.") for name in report["weight_damage"])  # and those were measured


def test_the_float_encoders_shortcut_gives_the_full_replays_loss():
    model = _world_model()
    recorder = RolloutRecorder(model, max_sequences=16, group=4, max_frames=8)
    _planner_like_runner(model)()
    recorder.remove()
    calib = CalibrationData(rollouts=recorder.groups, encoder_frames=recorder.frames())
    replay = RolloutReplay(model, calib, cost_weight=1.0, encoder_weight=1.0, through_encoder=True)
    names = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    encoding = replay.encoder_layers(model, names)
    assert encoding and set(encoding) < set(replay.layers_run_through(model, names))
    assert not any(name.startswith("predictor.") for name in encoding)
    layer = model.get_submodule(next(name for name in names if name.startswith("predictor.")))
    with torch.no_grad():
        layer.weight.mul_(1.5)
    damaged = replay.mean_loss(model)
    assert damaged > 0 and replay.mean_loss(model, float_encoder=True) == damaged


def test_without_the_encoder_mixed_keeps_the_encoders_widths():
    model = _world_model()
    config = QuantConfig.uniform(w_bits=4, a_bits=4, a_granularity="per_token")
    allocation = calibrate_and_quantize(model, "mixed", config, _planner_like_runner(model),
                                        method_options={"budget": 5.0, "encoder": False})["method_report"]
    widths = {name: m.weight_quantizer.bits for name, m in model.named_modules() if hasattr(m, "weight_quantizer")}
    assert allocation["fixed_layers"] and all(n.startswith("encoder.") for n in allocation["fixed_layers"])
    assert {widths[name] for name in allocation["fixed_layers"]} == {4}
    assert not any(n.startswith("encoder.") for n in allocation["weight_bits"])


def test_an_encoder_layer_is_sensitive_only_when_the_replay_runs_through_the_encoder():
    model = _world_model()
    config = QuantConfig(encoder=QuantScheme(w_bits=4), predictor=QuantScheme())
    allocation = calibrate_and_quantize(model, "mixed", config, _planner_like_runner(model),
                                        method_options={"budget": 4.0})["method_report"]
    damage = allocation["weight_damage"]
    assert set(damage) == {n for n, m in model.named_modules() if hasattr(m, "weight_quantizer")}
    assert all(name.startswith("encoder.") and d[3] > d[8] > 0 for name, d in damage.items())
    assert allocation["average_weight_bits"] <= 4.0


def test_mixed_needs_rollouts_of_a_world_model():
    model = _world_model()
    with pytest.raises(QuantizationError, match="no planning rollout"):
        calibrate_and_quantize(model, "mixed", QuantConfig.uniform(w_bits=4), lambda: None)
