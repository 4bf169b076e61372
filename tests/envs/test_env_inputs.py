"""Both environments against bad input (a ConfigError naming the bad value and what is valid), and
their batched rollouts against the generic definition reset_to + step (envs/batch.py)."""

from __future__ import annotations

import numpy as np
import pytest

from wmquant.envs import make, make_batch
from wmquant.envs.batch import BatchEnv
from wmquant.errors import ConfigError

WALL_STATE = np.array([[10.0, 20.0], [40.0, 30.0], [12.0, 50.0]])


@pytest.fixture(scope="module")
def wall_batch():
    env = make_batch("wall", 3)
    env.reset_to(WALL_STATE)
    return env


@pytest.fixture(scope="module")
def pusht_batch():
    env = make_batch("pusht", 3, workers=0)
    yield env
    env.close()


@pytest.mark.parametrize("call, match", [
    (lambda e: e.reset_to(WALL_STATE[:2]), r"Wall states must have shape \(3, 2\), got \(2, 2\)"),
    (lambda e: e.reset_to(WALL_STATE[:, :1]), r"Wall states must have shape \(3, 2\), got \(3, 1\)"),
    (lambda e: e.reset_to(WALL_STATE + [[0.0, 80.0], [0, 0], [0, 0]]), r"in \[0, 64\], got \[10\.0, 100\.0\]"),
    (lambda e: e.step(np.zeros((3, 3))), r"Wall actions must have shape \(3, 2\), got \(3, 3\)"),
    (lambda e: e.step(np.full((3, 2), np.inf)), "Wall actions must be finite numbers"),
    (lambda e: e.rollout(WALL_STATE, np.zeros((3, 2))), r"rollout actions must have shape \(n, T, 2\), got \(3, 2\)"),
    (lambda e: e.rollout(WALL_STATE, np.zeros((2, 4, 2))), r"Wall actions must have shape \(3, 4, 2\)"),
    (lambda e: e.reset_to(WALL_STATE[:1], indices=[3]), r"env indices must lie in 0\.\.2, got \[3\]"),
    (lambda e: e.update_env([{"fix_wall_location": 32, "fix_door_location": 30}]), "got 1 env_infos for 3 envs"),
    (lambda e: e.sample_random_init_goal_states([1, 2]), r"need one seed per env \(3\), got 2"),
])
def test_wall_batch_env_refuses_bad_input(wall_batch, call, match):
    with pytest.raises(ConfigError, match=match):
        call(wall_batch)


def test_wall_step_before_any_reset_is_refused():
    with pytest.raises(RuntimeError, match=r"step\(\) before reset_to\(\)"):
        make_batch("wall", 2).step(np.zeros((2, 2)))


@pytest.mark.parametrize("call, match", [
    (lambda: make("wall", render_mode="human"), r"render_mode 'human' is not supported; valid: None, 'rgb_array'"),
    (lambda: make("wall", door_y=90), r"door y 90 is outside the frame; valid: integers"),
    (lambda: make_batch("wall", 0), "num_envs must be a positive integer, got 0"),
    (lambda: make("pusht", render_mode="human"), r"PushT render_mode must be 'rgb_array' or None, got 'human'"),
    (lambda: make_batch("pusht", 2, workers=-1), "workers must be a non-negative integer or None, got -1"),
    (lambda: make_batch("pusht", 2, workers=True), "workers must be a non-negative integer or None, got True"),
])
def test_constructors_refuse_bad_settings(call, match):
    with pytest.raises(ConfigError, match=match):
        call()


def test_a_single_wall_env_refuses_bad_action_sequences():
    env = make("wall")
    env.prepare(0, np.array([10.0, 10.0]))
    with pytest.raises(ConfigError, match=r"step_multiple actions must have shape \(T, 2\), got \(4,\)"):
        env.step_multiple(np.zeros(4))
    with pytest.raises(ConfigError, match=r"rollout actions must have shape \(T, 2\), got \(2, 3\)"):
        env.rollout(0, np.array([10.0, 10.0]), np.zeros((2, 3)))


PUSHT_STATES = np.array([[200.0, 250.0, 300.0, 300.0, 0.5, 0.0, 0.0],
                         [300.0, 200.0, 250.0, 260.0, 1.5, 0.0, 0.0],
                         [150.0, 350.0, 220.0, 240.0, 3.0, 0.0, 0.0]])


@pytest.mark.parametrize("call, match", [
    (lambda e: e.reset_to(PUSHT_STATES[:, :4]), r"PushT states must have shape \(n, 7\) or \(n, 5\), got \(3, 4\)"),
    (lambda e: e.reset_to(PUSHT_STATES[:2]), "expected 3 PushT states, got 2"),
    (lambda e: e.reset_to(np.where(np.eye(3, 7) > 0, np.nan, PUSHT_STATES)), "PushT states must be finite"),
    (lambda e: e.step(np.zeros((3, 3))), r"PushT actions must have shape \(3, 2\), got \(3, 3\)"),
    (lambda e: e.reset_to(PUSHT_STATES[:2], indices=[0, 0]), r"env indices must be distinct, got \[0, 0\]"),
    (lambda e: e.reset_to(PUSHT_STATES[:1], indices=[5]), r"env indices must be in \[0, 3\), got \[5\]"),
    (lambda e: e.update_env([{"shape": "T"}]), "update_env got 1 env_infos for 3 environments"),
    (lambda e: e.update_env([{"shape": "T"}, {"shape": "L"}, {"shape": "T"}]), "unknown PushT block shape 'L'; valid shapes"),
    (lambda e: e.update_env([{"shape": "T", "colour": 1}] * 3), r"unknown PushT env_info keys \['colour'\]; valid: shape"),
    (lambda e: e.update_env(["T"] * 3), "PushT env_info must be a dict like"),
    (lambda e: e.rollout(PUSHT_STATES, np.zeros((3, 2))), r"rollout needs actions of shape \(3, T, 2\), got \(3, 2\)"),
    (lambda e: e.rollout(PUSHT_STATES, np.full((3, 2, 2), np.nan)), "PushT actions must be finite"),
    (lambda e: e.simulate(PUSHT_STATES, np.zeros((2, 4, 2))), r"simulate needs actions of shape \(3, T, 2\), got \(2, 4, 2\)"),
    (lambda e: e.eval_state(PUSHT_STATES, PUSHT_STATES[:, :5]), "eval_state needs goal and current states of equal shape"),
])
def test_pusht_batch_env_refuses_bad_input(pusht_batch, call, match):
    with pytest.raises(ConfigError, match=match):
        call(pusht_batch)


def test_a_single_pusht_env_refuses_bad_action_sequences():
    env = make("pusht", render_size=64)
    env.prepare(0, PUSHT_STATES[0])
    with pytest.raises(ConfigError, match=r"step_multiple needs actions of shape \(T, 2\), got \(4,\)"):
        env.step_multiple(np.zeros(4))
    with pytest.raises(ConfigError, match=r"rollout needs actions of shape \(T, 2\), got \(2, 3\)"):
        env.rollout(0, PUSHT_STATES[0], np.zeros((2, 3)))


def _actions(count, steps, scale, seed):
    return np.random.default_rng(seed).normal(0.0, scale, (count, steps, 2))


@pytest.mark.parametrize("name, states, scale", [("wall", WALL_STATE, 1.5), ("pusht", PUSHT_STATES, 0.4)])
def test_each_batched_rollout_equals_reset_then_step(name, states, scale, request):
    env = request.getfixturevalue(f"{name}_batch")
    actions = _actions(3, 6, scale, seed=4)
    obs, reached = env.rollout(states, actions)
    generic_obs, generic_reached = BatchEnv.rollout(env, states, actions)
    assert obs["visual"].shape[:2] == (3, 7) and reached.shape[:2] == (3, 7)
    np.testing.assert_array_equal(reached, generic_reached)
    np.testing.assert_array_equal(obs["visual"], generic_obs["visual"])
    np.testing.assert_array_equal(obs["proprio"], generic_obs["proprio"])
    assert not np.array_equal(reached[:, 0], reached[:, -1])  # the actions moved something


def test_pusht_simulate_matches_the_physics_of_stepping_in_and_out_of_process(pusht_batch):
    actions = _actions(3, 8, 0.5, seed=5)
    finals = pusht_batch.simulate(PUSHT_STATES, actions, env_infos=[{"shape": "T"}] * 3)
    _, reached = pusht_batch.rollout(PUSHT_STATES, actions)
    np.testing.assert_allclose(finals, reached[:, -1], rtol=0, atol=1e-9)
    with make_batch("pusht", 3, workers=2) as pooled:
        np.testing.assert_array_equal(pooled.simulate(PUSHT_STATES, actions), finals)
