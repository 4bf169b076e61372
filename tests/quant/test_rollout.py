"""Rollout-aware calibration (method rollout): the horizon-wide rollout loss decreases, the learned
clipping reaches the quantizers, and the float weights are left as they were."""

from __future__ import annotations

import torch

from wmquant.quant import QuantConfig, calibrate_and_quantize
from wmquant.quant.layers import QuantLinear
from wmquant.quant.methods.rollout import rollout_loss

from test_mixed import _planner_like_runner, _world_model


def test_the_rollout_loss_decreases_and_the_clipping_is_used():
    model = _world_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = QuantConfig.uniform(w_bits=3, a_bits=8, a_granularity="per_token")
    report = calibrate_and_quantize(model, "rollout", config, _planner_like_runner(model),
                                    method_options={"epochs": 15, "lr": 2e-2})
    losses = report["method_report"]["loss_by_epoch"]
    assert len(losses) == 16 and losses[-1] < 0.9 * losses[0]
    assert report["method_report"]["layers"] and all(n.startswith("predictor.") for n in report["method_report"]["layers"])
    # the float weights are unchanged; the learned factors sit in the weight quantizers
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
    qkv = model.predictor.blocks[0].attn.qkv
    assert isinstance(qkv, QuantLinear) and qkv.weight_quantizer.clip_max is not None
    assert float(qkv.weight_quantizer.clip_max.min()) < 0.982  # moved from the initial sigmoid(4)


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


def test_rollouts_recorded_under_inference_mode_can_be_trained_on():
    model = _world_model()
    runner = _planner_like_runner(model)

    def planner_in_inference_mode():
        with torch.inference_mode():
            runner()

    report = calibrate_and_quantize(model, "rollout", QuantConfig.uniform(w_bits=4), planner_in_inference_mode,
                                    method_options={"epochs": 1})
    assert len(report["method_report"]["loss_by_epoch"]) == 2
