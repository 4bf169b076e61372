"""Mechanism measurements: the probe, the latent error, and cross-evaluation of plans."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from wmquant.cli import main
from wmquant.configs import compose_config
from wmquant.diagnose.mechanisms import LinearProbe, measure_mechanisms, relative_latent_error
from wmquant.models.checkpoint import shipped_model_names
from wmquant.planning.session import PlanningSession

TINY = ["n_evals=4", "n_calib=4", "planner.max_iter=1", "quant_iter=1", "planner.sub_planner.num_samples=30",
        "planner.sub_planner.topk=5", "planner.sub_planner.opt_steps=3", "save_plots=false", "engine.device=cpu"]
needs_wall = pytest.mark.skipif("wall" not in shipped_model_names(), reason="the shipped Wall model is missing")


def test_probe_recovers_a_linear_map_and_not_noise():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 12))
    states = features @ rng.normal(size=(12, 2)) + 3.0
    probe = LinearProbe(features[:150], states[:150])
    assert probe.r2(features[150:], states[150:]) > 0.999
    noise = rng.normal(size=(200, 2))
    assert LinearProbe(features[:150], noise[:150]).r2(features[150:], noise[150:]) < 0.2


def test_relative_latent_error():
    z = {"visual": torch.ones(3, 1, 4, 2), "proprio": torch.full((3, 1, 2), 2.0)}
    assert relative_latent_error(z, z)["visual"].tolist() == [0.0, 0.0, 0.0]
    scaled = {"visual": z["visual"] * 1.1, "proprio": z["proprio"]}
    assert relative_latent_error(z, scaled)["visual"] == pytest.approx([0.01] * 3)


@needs_wall
def test_a_float_copy_measures_no_damage_and_identical_plans():
    session = PlanningSession(compose_config("plan_wall", TINY))
    measured = measure_mechanisms(session, copy.deepcopy(session.model))
    encoder = measured["encoder"]
    assert encoder["relative_latent_error"] == {"visual": 0.0, "proprio": 0.0}
    assert encoder["probe_r2"]["fp"] == encoder["probe_r2"]["fp_probe_on_quantized"] == encoder["probe_r2"]["quantized_refit"]
    per_episode = measured["cross_evaluation"]["per_episode"]
    assert per_episode["cost_under_fp_of_fp_plan"] == per_episode["cost_under_quantized_of_quantized_plan"]
    assert per_episode["sim_state_dist_of_fp_plan"] == per_episode["sim_state_dist_of_quantized_plan"]
    assert measured["cross_evaluation"]["summary"]["quantized_objective_misranks"] == 0.0
    assert len(per_episode["sim_success_of_fp_plan"]) == 4
    ranking = measured["ranking"]
    assert ranking["summary"]["median_rho_quantized_fp"] == pytest.approx(1.0)
    assert ranking["summary"]["mean_elite_overlap"] == 1.0
    assert ranking["per_episode"]["rho_quantized_simulator"] == ranking["per_episode"]["rho_fp_simulator"]
    assert ranking["per_episode"]["sim_distance_of_quantized_choice"] == ranking["per_episode"]["sim_distance_of_fp_choice"]


class _ShuffledCosts:
    """An engine whose costs are another engine's, reversed in order over the candidates."""

    def __init__(self, engine):
        self.engine, self.device = engine, engine.device

    def encode(self, obs):
        return self.engine.encode(obs)

    def sample_costs(self, z0, goal, actions):
        return -self.engine.sample_costs(z0, goal, actions)


@needs_wall
def test_ranking_tells_a_reversed_objective_from_the_simulator():
    from wmquant.diagnose.ranking import candidate_ranking

    session = PlanningSession(compose_config("plan_wall", TINY))
    episodes, env = session.episodes("evaluation")
    planner = session.planner()
    try:
        measured = candidate_ranking(session.engine, _ShuffledCosts(session.engine), env, episodes,
                                     session.bundle.frameskip, planner.config.horizon, planner.action_dim,
                                     candidates=20, seed=3)
    finally:
        env.close()
    per_episode = measured["per_episode"]
    assert per_episode["rho_quantized_fp"] == pytest.approx([-1.0] * 4)
    assert per_episode["rho_quantized_simulator"] == pytest.approx([-r for r in per_episode["rho_fp_simulator"]])
    assert measured["summary"]["median_rho_fp_simulator"] > 0.3  # the FP model's cost follows the simulator's distance
    assert measured["elites"] == 2 and measured["summary"]["mean_elite_overlap"] == 0.0
    best = np.asarray(per_episode["sim_distance_of_best_candidate"])
    assert (np.asarray(per_episode["sim_distance_of_fp_choice"]) >= best).all()


@needs_wall
def test_quant_run_publishes_its_mechanisms(tmp_path):
    out = tmp_path / "run"
    two_episodes = ["n_evals=2" if setting.startswith("n_evals=") else setting for setting in TINY]
    assert main(["quant", "method=rtn", "predictor_wbit=4", "predictor_abit=4", "encoder_wbit=4", "encoder_abit=4",
                 *two_episodes, "mechanisms=true", f"output_dir={out}"]) == 0
    result = json.loads((out / "result.json").read_text())
    encoder = result["quant"]["mechanisms"]["encoder"]
    assert encoder["relative_latent_error"]["visual"] > 1e-4  # W4A4 moves the latents
    assert encoder["probe_frames"] == {"train": 8, "test": 4}  # start and goal of each episode
    assert result["mpc_logs"][0]["mpc/planning_loss_by_opt_step"] and len(result["mpc_logs"]) == 1
    assert main(["quant", "method=rtn", *TINY, "mechanisms=maybe", f"output_dir={tmp_path / 'bad'}"]) == 2
