"""Search or objective: the model's first-step CEM plan against the simulator's, each scored by the
model's cost and by the simulator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wmquant.cli import main
from wmquant.configs import compose_config
from wmquant.diagnose.objective import search_or_objective, summarise
from wmquant.models.checkpoint import shipped_model_names
from wmquant.planning.ceiling import state_cost, true_dynamics_cem
from wmquant.planning.mpc import _to_env_actions
from wmquant.planning.session import PlanningSession

TINY_CEM = ["planner.sub_planner.num_samples=16", "planner.sub_planner.topk=4", "planner.sub_planner.opt_steps=3"]


def test_the_verdict_splits_only_the_episodes_that_only_the_simulator_solves():
    per_episode = {
        "sim_success_of_model_plan":      [1, 0, 0, 0, 0, 0],
        "sim_success_of_simulator_plan":  [1, 1, 1, 1, 0, 1],
        "cost_under_model_of_model_plan":     [1.0, 2.0, 2.0, 1.0, 1.0, 1.0],
        "cost_under_model_of_simulator_plan": [5.0, 1.0, 1.5, 3.0, 0.1, 2.0],
        # the cost of the true outcomes (a perfect predictor)
        "cost_under_model_of_model_outcome":     [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        "cost_under_model_of_simulator_outcome": [1.0, 1.0, 1.0, 0.5, 1.0, 4.0],
        "visual_cost_under_model_of_model_outcome":     [0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
        "visual_cost_under_model_of_simulator_outcome": [0.5, 0.5, 0.5, 0.1, 0.5, 0.2],
    }
    summary = summarise(per_episode)
    assert summary["only_simulator_solves"] == 4  # 1, 2, 3, 5; 0 is solved by both, 4 by neither
    assert summary["search_failures"] == 2  # 1 and 2: the model's cost prefers the simulator's plan
    assert summary["objective_failures"] == 2  # 3 and 5: it prefers its own failing plan
    assert summary["prediction_failures"] == 1  # 3: the true outcomes' cost prefers the simulator's plan
    assert summary["metric_failures"] == 1  # 5: even the true outcomes' cost prefers the model's plan
    assert summary["metric_failures_decided_by_proprio"] == 1  # 5: its visual term alone prefers the simulator's
    assert summary["cost_ratio_simulator_over_model_plan_median"] == pytest.approx(1.375)  # of 0.5, 0.75, 3, 2
    # episode 3, the prediction failure: the simulator's plan predicted at 3.0, truly 0.5; the model's
    # own plan predicted at 1.0, truly 1.0
    assert summary["prediction_failures_simulator_plan_predicted_over_true_median"] == pytest.approx(6.0)
    assert summary["prediction_failures_model_plan_true_over_predicted_median"] == pytest.approx(1.0)
    assert summary["success_of_model_plan"] == pytest.approx(1 / 6)
    assert summary["success_of_simulator_plan"] == pytest.approx(5 / 6)


def test_the_two_sides_of_prediction_failures_are_medians_over_those_episodes_only():
    per_episode = {
        "sim_success_of_model_plan":      [0, 0, 0, 0],
        "sim_success_of_simulator_plan":  [1, 1, 1, 1],
        "cost_under_model_of_model_plan":     [1.0, 1.0, 2.0, 1.0],
        "cost_under_model_of_simulator_plan": [4.0, 2.0, 8.0, 5.0],
        "cost_under_model_of_model_outcome":     [3.0, 2.0, 3.0, 1.0],
        # episodes 0-2: the true outcome prefers the simulator's plan (prediction); 3: it does not (metric)
        "cost_under_model_of_simulator_outcome": [1.0, 1.0, 2.0, 9.0],
    }
    summary = summarise(per_episode)
    assert (summary["prediction_failures"], summary["metric_failures"]) == (3, 1)
    assert summary["prediction_failures_simulator_plan_predicted_over_true_median"] == pytest.approx(4.0)  # 4, 2, 4
    assert summary["prediction_failures_model_plan_true_over_predicted_median"] == pytest.approx(2.0)  # 3, 2, 1.5
    no_prediction_failure = summarise({k: v[3:] for k, v in per_episode.items()})
    assert no_prediction_failure["prediction_failures_simulator_plan_predicted_over_true_median"] is None


@pytest.mark.skipif("pusht" not in shipped_model_names(), reason="the shipped PushT model is missing")
def test_both_plans_are_scored_by_the_model_and_by_the_simulator():
    session = PlanningSession(compose_config("plan_pusht", ["model_name=pusht", "n_evals=3", "engine.device=cpu",
                                                            "goal_source=dset", *TINY_CEM]))
    episodes, env = session.episodes("evaluation")
    try:
        report = search_or_objective(session, episodes, env)
        per_episode = report["per_episode"]
        planner, engine = session.planner(), session.engine
        _, start = env.reset_to(episodes.init_states)
        simulator_plan = true_dynamics_cem("pusht", env, np.asarray(start, np.float64), episodes.goal_states,
                                           list(episodes.env_infos), list(episodes.seeds), 0, int(session.cfg.seed),
                                           planner.config, session.bundle.frameskip, session.bundle.normalization)
        actions = torch.as_tensor(simulator_plan, dtype=torch.float32)
        with torch.no_grad():
            z0, zg = engine.encode(episodes.obs_0), engine.encode(episodes.obs_g)
            model_cost = engine.sample_costs(z0, zg, actions[:, None])[:, 0].numpy()
        env_obs, states = env.rollout(episodes.init_states, _to_env_actions(actions, session.bundle.frameskip, engine))
        verdict = env.eval_state(episodes.goal_states, states[:, -1])
    finally:
        env.close()
    assert per_episode["cost_under_model_of_simulator_plan"] == pytest.approx(model_cost.tolist(), rel=1e-5)
    assert per_episode["sim_success_of_simulator_plan"] == np.asarray(verdict["success"], int).tolist()
    assert per_episode["sim_state_dist_of_simulator_plan"] == pytest.approx(np.asarray(verdict["state_dist"], float).tolist())
    # the simulator's CEM optimised the simulator's cost: its plan ends nearer the goal than doing nothing
    still = state_cost("pusht", np.asarray(start, np.float64), episodes.goal_states)
    reached = state_cost("pusht", np.asarray(states[:, -1], np.float64), episodes.goal_states)
    assert np.all(reached <= still + 1e-6)
    assert len(per_episode["cost_under_model_of_model_plan"]) == 3
    # the outcome cost is the model's objective on the encoded frames the simulator reached
    with torch.no_grad():
        reached = {k: v[:, :: session.bundle.frameskip] for k, v in env_obs.items()}
        truth_cost = engine.objective(engine.encode(reached), zg).numpy()
    assert per_episode["cost_under_model_of_simulator_outcome"] == pytest.approx(truth_cost.tolist(), rel=1e-5)
    visual = np.asarray(per_episode["visual_cost_under_model_of_simulator_outcome"])
    proprio = np.asarray(per_episode["proprio_cost_under_model_of_simulator_outcome"])
    assert visual + engine.objective.alpha * proprio == pytest.approx(truth_cost, rel=1e-5)


@pytest.mark.skipif("pusht" not in shipped_model_names(), reason="the shipped PushT model is missing")
def test_diagnose_objective_command(tmp_path, capsys):
    code = main(["diagnose", "objective", "--model", "pusht", "--goals", "2", "--device", "cpu", "--out", str(tmp_path),
                 *[arg for o in TINY_CEM for arg in ("--set", o)]])
    assert code == 0
    out = capsys.readouterr().out
    assert "search failures" in out and "the block must move" in out and "decided by the proprio term" in out
    report = json.loads((tmp_path / "objective.json").read_text())
    assert report["cem"] == {"num_samples": 16, "topk": 4, "opt_steps": 3}
    assert len(report["needs_push"]) == 2 and report["summary"]["episodes"] == 2


def test_diagnose_objective_refuses_the_gradient_planner(tmp_path, capsys):
    code = main(["diagnose", "objective", "--model", "wall", "--goals", "1", "--device", "cpu", "--out", str(tmp_path),
                 "--set", "planner.sub_planner.name=gd"])
    assert code == 2
    assert "planner.sub_planner.name=cem" in capsys.readouterr().err


def test_diagnose_landscape_refuses_planning_overrides(tmp_path, capsys):
    code = main(["diagnose", "landscape", "--model", "wall", "--out", str(tmp_path), "--set", "objective.alpha=0.1"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "--set" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("seed", ["-1", "4294967"])
def test_diagnose_landscape_refuses_a_seed_outside_32_bits_naming_it(seed, tmp_path, capsys):
    code = main(["diagnose", "landscape", "--model", "wall", "--out", str(tmp_path / "out"), "--seed", seed])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert f"--seed must be an integer in [0, 4294967) for landscape, got {seed}" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
