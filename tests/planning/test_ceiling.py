"""`wmquant ceiling`: MPC-CEM on the true Wall dynamics, with progress kept per iteration; its cost,
simulation and CEM step against their definitions."""

import dataclasses
import json
import time

import numpy as np
import pytest
import torch

from wmquant.cli import main
from wmquant.envs import make_batch
from wmquant.planning.cem import CEMConfig, noise_generator
from wmquant.planning.ceiling import (CEILING_ARRAYS, CeilingConfig, run_ceiling, simulate_states, state_cost,
                                      true_dynamics_cem)
from wmquant.planning.checkpoint import load_state
from wmquant.planning.episodes import evaluation_seeds, make_episodes

from toy_model import wall_normalization

LAYOUT = {"fix_wall_location": 32, "fix_door_location": 30}


def test_wall_ceiling_writes_result_and_progress(tmp_path):
    out = tmp_path / "ceiling"
    code = main(["ceiling", "--config-name", "plan_wall.yaml", "model_name=wall", "n_evals=4", "planner.max_iter=3",
                 "planner.sub_planner.num_samples=60", "planner.sub_planner.topk=10",
                 "planner.sub_planner.opt_steps=4", f"output_dir={out}", "save_plots=false"])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    progress = json.loads((out / "progress.json").read_text())
    assert result["method"] == "ceiling"
    rates = result["success_rate_by_iter"]
    assert len(rates) == 3 and all(b >= a for a, b in zip(rates, rates[1:]))  # success is cumulative
    # progress.json holds what was measured after each iteration that ran (it stops once all succeed)
    done = progress["iterations_done"]
    assert 1 <= done <= 3 and progress["success_rate_by_iter"] == rates[:done]
    assert rates[-1] > 0  # true dynamics reach some of the goals even with this small budget
    rows = np.array(result["success_by_iter"])
    first = [int(np.argmax(col)) if col.any() else None for col in rows.T]
    assert result["first_success_iter"] == first and any(k is not None for k in first)


def test_state_cost_is_a_weighted_squared_distance_with_a_wrapped_angle():
    wall = state_cost("wall", np.array([[3.0, 4.0]]), np.array([[0.0, 0.0]]))
    assert wall.tolist() == [25.0]
    goal = np.array([100.0, 100.0, 200.0, 200.0, 0.1, 50.0, 50.0])
    state = np.array([103.0, 96.0, 200.0, 200.0, 2 * np.pi - 0.1, -20.0, 0.0])  # 0.2 rad apart across 0
    weight = 20.0 / (np.pi / 9)
    assert state_cost("pusht", state, goal) == pytest.approx(9 + 16 + (0.2 * weight) ** 2, rel=1e-12)  # no velocities


def test_simulated_wall_states_are_the_envs():
    env = make_batch("wall", 3)
    env.update_env([LAYOUT] * 3)
    start = np.array([[10.0, 10.0], [30.0, 30.0], [50.0, 12.0]])
    actions = np.random.default_rng(1).normal(0, 1.5, (3, 12, 2))
    _, states = env.rollout(start, actions)
    np.testing.assert_array_equal(simulate_states("wall", env, start, actions, [LAYOUT] * 3), states[:, -1])


def test_ceiling_cem_keeps_the_mean_and_unbiased_std_of_the_cheapest_simulated_samples():
    env = make_batch("wall", 2)
    env.update_env([LAYOUT] * 2)
    norm = dataclasses.replace(wall_normalization(), action_mean=torch.tensor([0.2, -0.1]),
                               action_std=torch.tensor([0.6, 0.9]))
    # episode 1's goal is where the mean's actions lead, so sample 0 (the mean itself) is an elite
    states = np.array([[10.0, 10.0], [50.0, 40.0]])
    drift = simulate_states("wall", env, states[1:], np.tile([0.2, -0.1], (1, 10, 1)), [LAYOUT])[0]
    goals = np.array([[20.0, 25.0], drift])
    cem = CEMConfig(horizon=2, topk=4, num_samples=16, opt_steps=2)
    mu = true_dynamics_cem("wall", env, states, goals, [LAYOUT] * 2, [7, 8], iteration=3, seed=99, cem=cem,
                           frameskip=5, normalization=norm)
    std, mean = norm.action_std.double().numpy(), norm.action_mean.double().numpy()
    for row, episode_seed in enumerate((7, 8)):  # the reference, from the definition
        noise = torch.randn((2, 16, 2, 10), generator=noise_generator(99, episode_seed, 3)).double().numpy()
        mean_actions, spread = np.zeros((2, 10)), np.ones((2, 10))
        for step in range(2):
            samples = mean_actions + spread * noise[step]
            samples[0] = mean_actions
            raw = samples.reshape(16, 10, 2) * std + mean
            finals = simulate_states("wall", env, np.repeat(states[row:row + 1], 16, 0), raw, [LAYOUT] * 16)
            order = np.argsort(((finals - goals[row]) ** 2).sum(1), kind="stable")[:4]
            if step == 0:
                assert (0 in order) == (row == 1)
            mean_actions, spread = samples[order].mean(0), samples[order].std(0, ddof=1)
        np.testing.assert_allclose(mu[row], mean_actions, rtol=0, atol=1e-12)


def test_the_ceiling_executes_its_denormalised_plan_and_pads_after_everyone_succeeded():
    norm = dataclasses.replace(wall_normalization(), action_mean=torch.tensor([0.1, -0.05]),
                               action_std=torch.tensor([0.8, 0.7]))
    env = make_batch("wall", 3)
    episodes = make_episodes(env, "wall", evaluation_seeds(99, 3), "random_state", goal_H=5, frameskip=5)
    cem = CEMConfig(horizon=5, topk=6, num_samples=40, opt_steps=3)
    one = run_ceiling("wall", env, episodes, norm, CeilingConfig(cem, max_iter=1), seed=99, progress=False)
    reference_env = make_batch("wall", 3)
    reference_env.update_env(episodes.env_infos)
    mu = true_dynamics_cem("wall", reference_env, episodes.init_states, episodes.goal_states, episodes.env_infos,
                           episodes.seeds, 0, 99, cem, 5, norm)
    raw = mu.reshape(3, 25, 2) * norm.action_std.double().numpy() + norm.action_mean.double().numpy()
    _, states = reference_env.rollout(episodes.init_states, raw)
    np.testing.assert_allclose(one.final_states, states[:, -1], rtol=0, atol=1e-12)
    success = reference_env.eval_state(episodes.goal_states, states[:, -1])["success"]
    assert one.success_by_iter == [success.astype(int).tolist()]
    assert one.success_iter == [0 if s else None for s in success]

    # goals a few px from the start: every episode succeeds at once, and the rows after are copies
    near = dataclasses.replace(episodes, goal_states=episodes.init_states + [3.0, 1.0])
    env = make_batch("wall", 3)
    env.update_env(near.env_infos)
    padded = run_ceiling("wall", env, near, norm, CeilingConfig(cem, max_iter=6), seed=99, progress=False)
    assert padded.success_iter == [0, 0, 0] and padded.success_by_iter == [[1, 1, 1]] * 6


def test_a_checkpointed_ceiling_continues_to_the_uninterrupted_result(tmp_path):
    cem = CEMConfig(horizon=5, topk=6, num_samples=40, opt_steps=3)

    def ceiling(max_iter, checkpoint=None, on_iteration=None):
        env = make_batch("wall", 6)
        episodes = make_episodes(env, "wall", evaluation_seeds(99, 6), "random_state", goal_H=5, frameskip=5)
        return run_ceiling("wall", env, episodes, wall_normalization(), CeilingConfig(cem, max_iter=max_iter), seed=99,
                           progress=False, checkpoint=checkpoint, run_fingerprint="c", on_iteration=on_iteration)

    reference = ceiling(6, tmp_path / "reference.npz")
    path = tmp_path / "mpc_state.npz"
    first = ceiling(2, path)
    after_two = load_state(path, "c", CEILING_ARRAYS)
    assert after_two.iterations_done == 2 and after_two.seconds > 0
    # the case under test: some episodes succeeded before the interruption, others plan on after it
    assert any(k is not None and k < 2 for k in reference.success_iter)
    assert any(k is None or k >= 2 for k in reference.success_iter)
    before = time.perf_counter()
    continued = ceiling(6, path)
    continuation_seconds = time.perf_counter() - before
    assert continued.resumed_from == 2 and first.success_by_iter == reference.success_by_iter[:2]
    assert continued.success_by_iter == reference.success_by_iter
    assert continued.success_iter == reference.success_iter
    np.testing.assert_array_equal(continued.final_states, reference.final_states)
    # the continued checkpoint holds every executed action, so it can be continued again, and the
    # time of both attempts
    saved, uninterrupted = load_state(path, "c", CEILING_ARRAYS), load_state(tmp_path / "reference.npz", "c", CEILING_ARRAYS)
    np.testing.assert_array_equal(saved.executed, uninterrupted.executed)
    assert continued.earlier_seconds == after_two.seconds
    assert after_two.seconds < saved.seconds <= after_two.seconds + continuation_seconds
    # a finished checkpoint is taken as it is: nothing is planned again
    calls = []
    again = ceiling(6, path, on_iteration=lambda k, trace: calls.append(k))
    assert again.resumed_from == 6 and calls == [] and again.success_by_iter == reference.success_by_iter
