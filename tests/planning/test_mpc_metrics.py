"""What an MPC run records, recomputed from the definitions (spec 5.8-5.10): the plans it was given
are replayed from the initial states in a fresh environment, and every logged metric, the executed
actions, the final states, the carried actions and the rollout-grid frames are derived from that
replay, not from the MPC loop's own bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wmquant.envs import make_batch
from wmquant.planning.cem import CEMConfig, CEMPlanner
from wmquant.planning.engine import Engine
from wmquant.planning.episodes import evaluation_seeds, make_episodes
from wmquant.planning.mpc import MPCConfig, run_mpc
from wmquant.planning.objective import Objective

from toy_model import DotPositionModel, wall_normalization

FRAMESKIP = 5


class RecordingPlanner(CEMPlanner):
    """CEM that remembers what it was given and what it returned, per call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def plan(self, engine, z0, z_goal, generators, init_actions=None):
        result = super().plan(engine, z0, z_goal, generators, init_actions)
        self.calls.append({"z0": z0, "carried": init_actions, "actions": result.actions.clone(),
                           "step_costs": result.step_costs.clone()})
        return result


def _setup(n=5):
    env = make_batch("wall", n)
    episodes = make_episodes(env, "wall", evaluation_seeds(99, n), "random_state", goal_H=5, frameskip=FRAMESKIP)
    norm = wall_normalization()
    engine = Engine(DotPositionModel(norm), norm, img_size=65, objective=Objective(alpha=0.5))
    planner = RecordingPlanner(CEMConfig(horizon=5, topk=6, num_samples=40, opt_steps=3), action_dim=2 * FRAMESKIP)
    return env, episodes, engine, planner, norm


def _env_actions(actions, norm):
    """Normalised (E, h, f*A) -> raw (E, h*f, A), the executed env actions."""
    e, h, width = actions.shape
    return norm.denormalize_actions(actions.reshape(e, h * FRAMESKIP, width // FRAMESKIP).float()).double().numpy()


def test_one_iteration_logs_upstreams_metrics_of_the_executed_plan():
    env, episodes, engine, planner, norm = _setup()
    seen = []
    trace = run_mpc(engine, planner, env, episodes, MPCConfig(n_taken_actions=5, max_iter=1), frameskip=FRAMESKIP,
                    seed=99, progress=False, plot_episodes=2, on_iteration=lambda k, t: seen.append((k, len(t.logs))))
    assert seen == [(0, 1)]  # called once per iteration, after its log line
    plan = planner.calls[0]["actions"]
    executed = _env_actions(plan, norm)
    np.testing.assert_array_equal(trace.executed_actions, executed)
    replay_env = make_batch("wall", len(episodes))
    replay_env.update_env(episodes.env_infos)
    obs, states = replay_env.rollout(episodes.init_states, executed)
    final_obs = {key: value[:, -1] for key, value in obs.items()}
    np.testing.assert_array_equal(trace.final_states, states[:, -1])

    verdict = replay_env.eval_state(episodes.goal_states, states[:, -1])
    z_goal = engine.encode(episodes.obs_g)
    predicted = engine.rollout(engine.encode(episodes.obs_0), plan)
    visual_term, proprio_term = engine.objective.terms(predicted, z_goal)
    z_final = engine.encode(final_obs)
    visual_gap = np.abs(final_obs["visual"].astype(float) - episodes.obs_g["visual"].astype(float)).mean(axis=(1, 2, 3))
    proprio_gap = np.abs(final_obs["proprio"] - episodes.obs_g["proprio"]).mean(axis=1)
    div_visual = (z_final["visual"][:, 0] - predicted["visual"][:, -1]).pow(2).sum()
    div_proprio = (z_final["proprio"][:, 0] - predicted["proprio"][:, -1]).pow(2).sum()

    log = trace.logs[0]
    assert log["step"] == 1
    # the planner's cost after each optimisation step, averaged over the episodes it planned
    assert log["mpc/planning_loss_by_opt_step"] == pytest.approx(planner.calls[0]["step_costs"].mean(dim=0).tolist())
    assert log["mpc/success_rate"] == pytest.approx(verdict["success"].mean())
    assert log["mpc/mean_state_dist"] == pytest.approx(verdict["state_dist"].mean(), rel=1e-12)
    assert log["mpc/mean_visual_dist"] == pytest.approx(visual_gap.mean(), rel=1e-12)
    assert log["mpc/mean_proprio_dist"] == pytest.approx(float(proprio_gap.mean()), rel=1e-6)
    assert log["mpc/mean_div_visual_emb"] == pytest.approx(float(div_visual.sqrt()), rel=1e-5)  # a Frobenius norm
    assert log["mpc/mean_div_proprio_emb"] == pytest.approx(float(div_proprio.sqrt()), rel=1e-5)
    assert trace.success_by_iter == [verdict["success"].astype(int).tolist()]
    assert trace.latent_mse_by_iter[0] == pytest.approx(float(visual_term.mean()), rel=1e-5)
    assert trace.planning_loss_by_iter[0] == pytest.approx(float((visual_term + 0.5 * proprio_term).mean()), rel=1e-5)

    # the rollout grid: the first 2 episodes, a frame every frameskip env steps, and the model's prediction
    grid = trace.first_plan
    assert grid["episodes"] == [0, 1]
    np.testing.assert_array_equal(grid["env_frames"], obs["visual"][:2, ::FRAMESKIP])
    torch.testing.assert_close(grid["predicted_visual"], predicted["visual"][:2], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(grid["goal_frames"], episodes.obs_g["visual"][:2])


def test_later_iterations_start_from_the_reached_state_and_carry_the_untaken_actions():
    env, episodes, engine, planner, norm = _setup(n=4)
    trace = run_mpc(engine, planner, env, episodes, MPCConfig(n_taken_actions=2, max_iter=3, skip_succeeded=False),
                    frameskip=FRAMESKIP, seed=99, progress=False)
    assert len(planner.calls) == 3 and planner.calls[0]["carried"] is None
    executed = []
    for k, call in enumerate(planner.calls):
        if k:
            torch.testing.assert_close(call["carried"], planner.calls[k - 1]["actions"][:, 2:], rtol=0, atol=0)
        executed.append(_env_actions(call["actions"][:, :2], norm))
    succeeded = np.zeros(len(episodes), dtype=bool)
    replay_env = make_batch("wall", len(episodes))
    replay_env.update_env(episodes.env_infos)
    _, state = replay_env.reset_to(episodes.init_states)
    for k, actions in enumerate(executed):
        actions[succeeded] = 0.0  # after success the env is held still
        obs, states = replay_env.rollout(state, actions)
        state = states[:, -1]
        # the next plan starts from the observation this iteration reached
        if k + 1 < len(planner.calls):
            z_next = engine.encode({key: value[:, -1] for key, value in obs.items()})
            torch.testing.assert_close(planner.calls[k + 1]["z0"]["visual"], z_next["visual"], rtol=0, atol=1e-6)
        succeeded |= replay_env.eval_state(episodes.goal_states, state)["success"]
        assert trace.success_by_iter[k] == succeeded.astype(int).tolist()
        np.testing.assert_array_equal(trace.executed_actions[:, k * 10:(k + 1) * 10], actions)
    assert [log["step"] for log in trace.logs] == [1, 2, 3]


def test_rows_after_everyone_succeeded_repeat_the_last_values():
    env, episodes, engine, planner, _ = _setup(n=6)
    full = run_mpc(engine, planner, env, episodes, MPCConfig(n_taken_actions=5, max_iter=8), frameskip=FRAMESKIP,
                   seed=99, progress=False)
    finished = [i for i, first in enumerate(full.success_iter) if first is not None and first <= 2]
    assert finished, "some toy episodes succeed within 3 iterations"
    env, _, engine, planner, _ = _setup(n=6)
    subset = episodes.subset(finished)
    small_env = make_batch("wall", len(finished))
    small_env.update_env(subset.env_infos)
    trace = run_mpc(engine, planner, small_env, subset, MPCConfig(n_taken_actions=5, max_iter=8), frameskip=FRAMESKIP,
                    seed=99, progress=False)
    last = max(trace.success_iter)
    assert len(planner.calls) == last + 1 and len(trace.logs) == last + 1
    for series in (trace.success_by_iter, trace.latent_mse_by_iter, trace.planning_loss_by_iter):
        assert len(series) == 8 and all(value == series[last] for value in series[last:])
    assert trace.success_rate_by_iter[-1] == 1.0


def test_a_checkpointed_run_continues_to_the_uninterrupted_result_and_a_finished_one_is_reused(tmp_path):
    import time

    from wmquant.planning.checkpoint import load_state

    def plan(max_iter, checkpoint=None):
        env, episodes, engine, planner, _ = _setup(n=5)
        started = time.perf_counter()
        trace = run_mpc(engine, planner, env, episodes, MPCConfig(n_taken_actions=2, max_iter=max_iter),
                        frameskip=FRAMESKIP, seed=99, progress=False, checkpoint=checkpoint, run_fingerprint="toy",
                        plot_episodes=2)
        return trace, planner, time.perf_counter() - started

    reference, _, _ = plan(5)
    path = tmp_path / "mpc_state.npz"
    _, _, seconds = plan(3, path)
    saved = load_state(path, "toy")
    assert saved.iterations_done == 3 and 0 < saved.seconds <= seconds  # this attempt's own time, nothing more
    continued, planner, _ = plan(5, path)
    assert continued.resumed_from == 3 and len(planner.calls) == 2
    assert continued.success_by_iter == reference.success_by_iter
    # episodes that succeeded before the interruption keep their iteration; others plan on
    assert continued.success_iter == reference.success_iter and 2 in reference.success_iter
    assert continued.planning_loss_by_iter == reference.planning_loss_by_iter
    assert continued.latent_mse_by_iter == reference.latent_mse_by_iter
    assert continued.first_plan["episodes"] == reference.first_plan["episodes"] == [0, 1]
    np.testing.assert_array_equal(continued.first_plan["env_frames"], reference.first_plan["env_frames"])
    torch.testing.assert_close(continued.first_plan["predicted_visual"], reference.first_plan["predicted_visual"])
    assert continued.logs == reference.logs
    np.testing.assert_array_equal(continued.executed_actions, reference.executed_actions)
    np.testing.assert_array_equal(continued.final_states, reference.final_states)
    again, planner, _ = plan(5, path)  # a finished checkpoint: nothing left to plan
    assert planner.calls == [] and again.resumed_from == 5 and again.logs == reference.logs
