"""PushT env at its edges: thresholds and ranges at their limits, the geometry helpers on general
input, what the single env keeps between calls (its frame, its space, its random streams), and the
batched env's workers (defaults, errors, death and shutdown)."""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest
from gymnasium.utils import seeding

from wmquant.envs import pusht
from wmquant.errors import ConfigError

GOAL = np.array([200.0, 200.0, 256.0, 256.0, 1.0, 0.0, 0.0])
# Agent right of the crossbar of an upright T (crossbar x in [40, 160], y in [250, 280]).
PUSH_LEFT_START = [200.0, 265.0, 100.0, 250.0, 0.0, 0.0, 0.0]


def exact_env(**kwargs):
    return pusht.PushTEnv(render_size=kwargs.pop("render_size", 16), reset_mode="exact", **kwargs)


# --------------------------------------------------------------------------------------------------
# Pure functions


def test_five_dimensional_states_gain_exactly_two_zero_velocities():
    states = pusht.as_states([[1.0, 2.0, 3.0, 4.0, 0.5], [5.0, 6.0, 7.0, 8.0, 1.5]])
    np.testing.assert_array_equal(states, [[1, 2, 3, 4, 0.5, 0, 0], [5, 6, 7, 8, 1.5, 0, 0]])


def test_success_needs_strictly_less_than_20_px_and_pi_over_9():
    goal = np.tile(GOAL, (3, 1))
    cur = goal.copy()
    cur[0, 2] += 20.0  # exactly 20 px
    cur[1, 4] = 1.0 + math.pi / 9  # exactly pi/9 (up to the rounding of 1 + pi/9 - 1)
    cur[2, [0, 4]] += [19.0, 0.3]
    result = pusht.eval_states(goal, cur)
    assert result["success"].tolist() == [False, pusht.wrapped_angle_difference(1.0, 1.0 + math.pi / 9) < math.pi / 9, True]
    exact = pusht.eval_states(np.array([[0, 0, 0, 0, 0.0]]), np.array([[0, 0, 0, 0, math.pi / 9]]))
    assert exact["success"].tolist() == [False]


def test_success_and_distance_of_five_dimensional_states():
    result = pusht.eval_states(GOAL[None, :5], (GOAL[:5] + [3.0, 4.0, 0.0, 0.0, 0.0])[None])
    assert result["success"].tolist() == [True]
    np.testing.assert_allclose(result["state_dist"], [5.0], rtol=0, atol=1e-12)


def test_the_sampler_draws_integer_positions_in_upstreams_ranges_for_many_seeds():
    # numpy's legacy randint rejects draws past the range, so a range one wider changes a draw only
    # now and then: the first seeds where it does are 22, 68, 652 and 882 for the four coordinates.
    for seed in range(1200):
        init, goal = pusht.sample_init_goal_states(seed)
        random_state = np.random.RandomState(seed)
        for state in (init, goal):
            expected = [random_state.randint(50, 450), random_state.randint(50, 450),
                        random_state.randint(100, 400), random_state.randint(100, 400)]
            random_state.randn()
            np.testing.assert_array_equal(state[:4], expected)
            assert 50 <= state[0] <= 449 and 50 <= state[1] <= 449
            assert 100 <= state[2] <= 399 and 100 <= state[3] <= 399


def _area(points):
    return pusht._polygon_area(np.asarray(points, dtype=float))


def test_convex_clipping_works_for_either_orientation_of_the_clip_polygon():
    # away from the origin, where the orientation's two dot products differ most
    square = [(100.0, 0.0), (110.0, 0.0), (110.0, 10.0), (100.0, 10.0)]
    shifted = [(105.0, 5.0), (115.0, 5.0), (115.0, 15.0), (105.0, 15.0)]
    for clip in (np.array(square), np.array(square[::-1])):
        assert _area(pusht._clip_convex(shifted, clip)) == pytest.approx(25.0, abs=1e-12)
        assert _area(pusht._clip_convex(shifted[::-1], clip)) == pytest.approx(25.0, abs=1e-12)


def test_coverage_counts_a_triangular_overlap():
    goal = [np.array([(0.0, 0.0), (10.0, 0.0), (10.0, 10.0), (0.0, 10.0)])]
    diamond = [np.array([(8.0, 5.0), (12.0, 1.0), (16.0, 5.0), (12.0, 9.0)])]  # its left corner pokes in
    assert pusht.coverage(diamond, goal) == pytest.approx(4.0 / 100.0, abs=1e-12)


@pytest.mark.parametrize("size", [8, 1024, np.int64(64)])
def test_render_sizes_at_the_limits_are_accepted(size):
    assert pusht.check_render_size(size) == int(size)


@pytest.mark.parametrize("size", [7, 1025, True, 64.0])
def test_render_sizes_past_the_limits_are_refused(size):
    with pytest.raises(ConfigError, match=r"render_size must be an integer in \[8, 1024\]"):
        pusht.check_render_size(size)


def test_a_goal_block_5_px_from_its_start_needs_a_push_in_either_axis():
    init = np.tile(GOAL, (4, 1))
    goal = init.copy()
    init[:, 2:4] = [[200.0, 200.0], [200.0, 209.0], [200.0, 200.0], [200.0, 200.0]]
    goal[:, 2:4] = [[206.0, 200.0], [206.0, 209.0], [203.0, 204.0], [203.0, 203.9]]
    assert pusht.needs_push(init, goal).tolist() == [True, True, True, False]


def test_failure_breakdown_at_the_thresholds_and_its_error_norms():
    goal = np.tile([200.0, 150.0, 256.0, 300.0, 1.0, 0.0, 0.0], (5, 1))  # x != y, to tell the axes apart
    final = goal.copy()
    final[0, 2] += 20.0  # position error exactly 20: fails
    goal[1, 4], final[1, 4] = 0.0, pusht.SUCCESS_ANGLE_THRESHOLD  # angle error exactly pi/9: fails
    final[2, [0, 1, 2, 3, 4]] += [12.0, 16.0, 3.0, 4.0, 0.5]  # agent 20 px, block 5 px (angle not in it)
    final[3, [0, 2]] += [15.0, 15.0]  # agent and block equally off: put down to the block
    final[4, [0, 3, 4]] += [1.23456, 2.34567, 0.0123456]  # solved; errors rounded to 1e-3 px and 1e-4 rad
    breakdown = pusht.failure_breakdown(goal, goal, final)
    assert breakdown["failed"] == 4
    assert (breakdown["position_only"], breakdown["angle_only"], breakdown["position_and_angle"]) == (2, 1, 1)
    assert breakdown["agent_error_px"] == [0.0, 0.0, 20.0, 15.0, 1.235]
    assert breakdown["block_error_px"] == [20.0, 0.0, 5.0, 15.0, 2.346]
    assert breakdown["angle_error_rad"] == [0.0, 0.3491, 0.5, 0.0, 0.0123]
    assert (breakdown["position_agent_dominant"], breakdown["position_block_dominant"]) == (1, 2)


# --------------------------------------------------------------------------------------------------
# The single env


def test_render_before_any_reset_draws_the_start_layout():
    env = pusht.PushTEnv(render_size=32)
    assert env.render().shape == (32, 32, 3)
    scene = env.scene()
    assert scene.agent_position == pusht.AGENT_START
    np.testing.assert_allclose(np.mean(scene.block_parts[0], axis=0), [256.0, 315.0], atol=1e-9)  # crossbar centre
    assert pusht.PushTEnv(render_size=32, render_mode=None).render() is None


def test_the_visual_space_spans_every_byte():
    space = pusht.PushTEnv(render_size=16).observation_space["visual"]
    assert space.low.min() == 0 and space.low.max() == 0 and space.high.min() == 255


def test_a_tiny_negative_angle_is_reported_as_zero():
    _, reached = exact_env().prepare(0, [100.0, 100.0, 300.0, 300.0, -1e-17, 0.0, 0.0])
    assert reached[4] == 0.0


def test_contact_marks_reach_2_px_into_each_shape():
    env = exact_env(render_size=64)
    env.reset(options={"init_state": [200.0, 340.0, 250.0, 250.0, 0.0, 0.0, 0.0]})
    for _ in range(6):
        env.step(np.array([0.2, 0.0]))
    marks = env.scene().contacts
    assert marks
    agent_circle = next(iter(env._agent.shapes))
    for mark in marks:
        inside_block = [min(part.point_query(end).distance for part in env._block_parts) for end in mark]
        inside_agent = [agent_circle.point_query(end).distance for end in mark]
        np.testing.assert_allclose(sorted([inside_block[0], inside_agent[1]]), [-2.0, -2.0], atol=1e-6)


def test_info_fields_are_the_parts_of_the_state():
    _, info = exact_env().reset(options={"init_state": [101.0, 102.0, 203.0, 204.0, 0.5, 7.0, -8.0]})
    np.testing.assert_array_equal(info["pos_agent"], [101.0, 102.0])
    np.testing.assert_array_equal(info["vel_agent"], [7.0, -8.0])
    np.testing.assert_array_equal(info["block_pose"], [203.0, 204.0, 0.5])
    np.testing.assert_array_equal(info["goal_pose"], pusht.GOAL_POSE)


def test_a_seeded_reset_seeds_gymnasiums_generator():
    first, second = exact_env(), exact_env()
    first.reset(seed=5)
    second.reset(seed=5)
    assert first.np_random.integers(2**62) == second.np_random.integers(2**62)


def test_an_unseeded_first_reset_draws_its_sampler_seed_from_the_envs_generator():
    starts = set()
    for k in range(100):
        env = exact_env()
        env.np_random, _ = seeding.np_random(k)
        _, info = env.reset()
        sampler_seed = int(seeding.np_random(k)[0].integers(2**31))
        expected = pusht.draw_random_state(np.random.RandomState(sampler_seed))
        np.testing.assert_allclose(info["state"], expected, rtol=0, atol=1e-9)
        starts.add(tuple(info["state"]))
    assert len(starts) == 100


def test_reset_checks_the_env_info_it_is_given():
    with pytest.raises(ConfigError, match="unknown PushT block shape 'L'"):
        exact_env().reset(options={"env_info": {"shape": "L"}})


# Two pushes of an upright T: after the first, a space that was kept would give the second a different
# result (pymunk warm-starts contacts from impulses it has cached; this pair differs by 1.4e-3 px).
FIRST_PUSH = ([200.0, 330.0, 250.0, 250.0, 0.0, 0.0, 0.0], [0.2, -0.1])
SECOND_PUSH = ([200.0, 300.0, 250.0, 250.0, 0.0, 0.0, 0.0], [0.1, -0.3])


def test_each_reset_starts_from_a_fresh_physics_space():
    used = exact_env()
    used.rollout(0, FIRST_PUSH[0], np.tile(FIRST_PUSH[1], (6, 1)))
    _, after_use = used.rollout(0, SECOND_PUSH[0], np.tile(SECOND_PUSH[1], (6, 1)))
    _, fresh = exact_env().rollout(0, SECOND_PUSH[0], np.tile(SECOND_PUSH[1], (6, 1)))
    np.testing.assert_array_equal(after_use, fresh)


def test_the_walls_stop_the_block_but_not_the_agent():
    env = exact_env()
    env.reset(options={"init_state": PUSH_LEFT_START})
    for _ in range(25):
        _, _, _, _, info = env.step(np.array([-0.3, 0.0]))
    assert info["state"][0] < 0.0  # the kinematic agent passes the wall at x = 5
    assert info["state"][2] > 60.0  # the block's crossbar (120 px wide) rests against it


def test_the_reward_is_coverage_over_0_95_capped_at_1():
    env = exact_env()
    goal_x, goal_y, goal_angle = pusht.GOAL_POSE
    env.reset(options={"init_state": [60.0, 60.0, goal_x, goal_y, goal_angle, 0.0, 0.0]})
    _, reward, _, _, info = env.step(np.zeros(2))
    assert info["coverage"] == pytest.approx(1.0, abs=1e-9) and reward == 1.0
    env.reset(options={"init_state": [60.0, 60.0, goal_x + 30.0, goal_y, goal_angle, 0.0, 0.0]})
    _, reward, _, _, info = env.step(np.zeros(2))
    assert 0.3 < info["coverage"] < 0.9
    assert reward == pytest.approx(info["coverage"] / 0.95, abs=1e-12)
    env.reset(options={"init_state": [60.0, 60.0, 120.0, 120.0, 0.0, 0.0, 0.0]})
    assert env.step(np.zeros(2))[1] == 0.0


def test_render_without_visual_observations_draws_the_current_state():
    blind, seeing = exact_env(render_size=32, visual_obs=False), exact_env(render_size=32)
    for env in (blind, seeing):
        env.reset(options={"init_state": [100.0, 100.0, 300.0, 300.0, 0.0, 0.0, 0.0]})
    first = blind.render().copy()
    np.testing.assert_array_equal(first, seeing.render())
    blind_obs, *_ = blind.step(np.array([0.5, 0.5]))
    seeing.step(np.array([0.5, 0.5]))
    assert set(blind_obs) == {"proprio"}
    np.testing.assert_array_equal(blind.render(), seeing.render())
    assert not np.array_equal(blind.render(), first)


def test_step_multiple_and_rollout_take_lists_and_any_number_of_actions():
    env = exact_env()
    goal_x, goal_y, goal_angle = pusht.GOAL_POSE
    at_goal = [60.0, 60.0, goal_x, goal_y, goal_angle, 0.0, 0.0]
    env.prepare(0, at_goal)
    obses, rewards, dones, infos = env.step_multiple([[0.01, 0.0]])
    assert obses["visual"].shape == (1, 16, 16, 3) and obses["proprio"].shape == (1, 4)
    assert rewards.tolist() == [1.0] and dones.tolist() == [False]
    assert infos["state"].shape == (1, 7) and infos["coverage"].shape == (1,)
    obses, rewards, dones, infos = env.step_multiple(np.zeros((0, 2)))
    assert obses["visual"].shape == (0, 16, 16, 3) and obses["proprio"].shape == (0, 4)
    assert rewards.shape == dones.shape == (0,)
    assert infos["state"].shape == (0, 7) and infos["block_pose"].shape == (0, 3)
    rolled, states = env.rollout(0, at_goal, [[0.01, 0.0], [0.0, 0.01]])
    assert rolled["visual"].shape == (3, 16, 16, 3) and states.shape == (3, 7)
    rolled, states = env.rollout(0, at_goal, np.zeros((0, 2)))
    assert rolled["proprio"].shape == (1, 4) and states.shape == (1, 7)


def test_step_multiple_and_rollout_without_visual_observations():
    env = exact_env(visual_obs=False)
    env.prepare(0, PUSH_LEFT_START)
    obses, _, _, infos = env.step_multiple([[0.1, 0.0], [0.1, 0.0]])
    assert set(obses) == {"proprio"} and obses["proprio"].shape == (2, 4)
    rolled, states = env.rollout(0, PUSH_LEFT_START, [[0.1, 0.0]])
    assert set(rolled) == {"proprio"} and rolled["proprio"].shape == (2, 4)
    np.testing.assert_array_equal(states[1], infos["state"][0])


# --------------------------------------------------------------------------------------------------
# The batched env in this process


@pytest.mark.parametrize("cores, num_envs", [(1, 3), (None, 3), (8, 1)])
def test_the_default_worker_count_is_capped_by_cores_and_envs(monkeypatch, cores, num_envs):
    monkeypatch.setattr(pusht.os, "cpu_count", lambda: cores)
    batch = pusht.PushTBatchEnv(num_envs, render_size=8)
    assert batch._in_process is not None and batch._processes == []


def test_one_worker_runs_in_this_process():
    batch = pusht.PushTBatchEnv(2, render_size=8, workers=1)
    assert batch._in_process is not None and batch._processes == []


def test_an_empty_batch_is_refused():
    with pytest.raises(ConfigError, match="num_envs must be a positive integer, got 0"):
        pusht.PushTBatchEnv(0, render_size=8, workers=0)


@pytest.mark.parametrize("indices", [[-1, 1], [0, 5]])
def test_indices_out_of_range_at_either_end_are_refused(indices):
    batch = pusht.PushTBatchEnv(3, render_size=8, workers=0)
    with pytest.raises(ConfigError, match=r"env indices must be in \[0, 3\)"):
        batch.step(np.zeros((2, 2)), indices=indices)


def test_an_empty_selection_gives_empty_arrays_of_the_right_shapes():
    batch = pusht.PushTBatchEnv(2, render_size=8, workers=0)
    batch.reset_to(np.tile(GOAL, (2, 1)))
    obs, states = batch.step(np.zeros((0, 2)), indices=[])
    assert obs["proprio"].shape == (0, 4) and obs["visual"].shape == (0, 8, 8, 3) and states.shape == (0, 7)
    obs, states = batch.rollout(np.zeros((0, 7)), np.zeros((0, 3, 2)), indices=[])
    assert obs["proprio"].shape == (0, 4, 4) and obs["visual"].shape == (0, 4, 8, 8, 3)
    assert states.shape == (0, 4, 7)


def test_batched_rollouts_check_and_convert_their_input():
    batch = pusht.PushTBatchEnv(2, render_size=8, workers=0)
    with pytest.raises(ConfigError, match="expected 2 PushT states, got 1"):
        batch.rollout(GOAL[None], np.zeros((2, 3, 2)))
    with pytest.raises(ConfigError, match="PushT states must be a rectangular array of numbers"):
        batch.rollout([list(GOAL[:5]), PUSH_LEFT_START], np.zeros((2, 3, 2)))
    obs, states = batch.rollout([list(GOAL), PUSH_LEFT_START], [[[0.1, 0.0]], [[0.0, 0.1]]])
    assert states.shape == (2, 2, 7) and obs["visual"].shape == (2, 2, 8, 8, 3)
    batch.update_env(info for info in ({"shape": "T"}, {"shape": "T"}))


def test_simulate_checks_its_input_and_forgets_earlier_sequences():
    batch = pusht.PushTBatchEnv(1, render_size=8, workers=0)
    with pytest.raises(ConfigError, match="unknown PushT block shape 'L'"):
        batch.simulate(GOAL[None], np.zeros((1, 2, 2)), env_infos=[{"shape": "L"}])
    with pytest.raises(ConfigError, match="PushT actions must be finite"):
        batch.simulate(GOAL[None], np.full((1, 2, 2), np.nan))
    first = ([FIRST_PUSH[0]], [[FIRST_PUSH[1]] * 6])
    second = ([SECOND_PUSH[0]], [[SECOND_PUSH[1]] * 6])
    fresh = pusht.PushTBatchEnv(1, render_size=8, workers=0).simulate(*second)
    batch.simulate(*first)
    np.testing.assert_array_equal(batch.simulate(*second), fresh)


# --------------------------------------------------------------------------------------------------
# Worker processes


def test_an_unknown_shape_is_refused_before_any_worker_starts():
    with pytest.raises(ConfigError, match="unknown PushT block shape 'L'"):
        pusht.PushTBatchEnv(2, render_size=8, workers=2, shape="L")


def test_workers_relay_errors_die_loudly_and_shut_down():
    batch = pusht.PushTBatchEnv(2, render_size=8, workers=2)
    processes = list(batch._processes)
    assert len(processes) == 2 and all(process.daemon for process in processes)
    # an error raised inside a worker comes back as itself, with the worker's traceback as its cause
    with pytest.raises(ConfigError, match="PushT states must be finite") as raised:
        batch._call("reset_to", np.array([1]), np.full((1, 7), np.nan))
    assert "in PushT worker 1" in str(raised.value.__cause__)
    # the worker survives its error
    _, states = batch.reset_to(np.tile(GOAL, (2, 1)))
    assert states.shape == (2, 7)
    batch.close()
    # each worker left its loop on the close message (a terminated one would show -15)
    assert [process.exitcode for process in processes] == [0, 0]
    with pytest.raises(ConfigError, match="this PushTBatchEnv is closed"):
        batch.step(np.zeros((2, 2)))
    with pytest.raises(ConfigError, match="this PushTBatchEnv is closed"):
        batch.simulate(np.tile(GOAL, (2, 1)), np.zeros((2, 1, 2)))
    batch.close()  # closing twice is harmless


def test_a_dead_worker_is_named_and_an_abandoned_batch_stops_its_workers():
    batch = pusht.PushTBatchEnv(2, render_size=8, workers=2)
    processes = list(batch._processes)
    processes[0].kill()
    processes[0].join(timeout=10)
    with pytest.raises(RuntimeError, match=rf"PushT worker 0 \(process {processes[0].pid}\) died"):
        batch.step(np.zeros((2, 2)))
    del batch
    gc.collect()
    processes[1].join(timeout=10)
    assert processes[1].exitcode == 0  # closed in order, not crashed on a vanished pipe


def test_leaving_a_with_block_closes_the_workers():
    with pusht.PushTBatchEnv(2, render_size=8, workers=2) as batch:
        processes = list(batch._processes)
        batch.reset_to(np.tile(GOAL, (2, 1)))
    assert [process.exitcode for process in processes] == [0, 0]
