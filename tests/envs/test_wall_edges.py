"""Wall env at its edges: moves that start, end or cross exactly on a wall line or a door edge, the
order of the door edge and the wall face on one move, the layout and state ranges at their limits,
array-like input, and the state the env keeps between calls (collision flags, positions, frames)."""

from __future__ import annotations

import numpy as np
import pytest

from wmquant.envs.wall import (
    WallBatchEnv,
    WallEnv,
    WallLayout,
    evaluate_states,
    propose_and_collide,
    render_frames,
    sample_init_goal,
    wall_masks,
)
from wmquant.errors import ConfigError


def step_one(position, action, wall_x=32, door_y=30):
    nxt, collided = propose_and_collide(
        np.array([position], float), np.array([action], float), np.array([wall_x]), np.array([door_y])
    )
    return nxt[0].tolist(), bool(collided[0])


# --------------------------------------------------------------------------------------------------
# Moves on the lines. Default layout: wall 32 (faces 29 and 35), door 30 (edges 26 and 34),
# borders 4 and 60. A blocked dot backs off 0.5 px across the line it hit and moves 0.5 px along it;
# a dot that would land on a line it may not leave is nudged 0.3 px inside.


@pytest.mark.parametrize(
    "position, action, expected, collided",
    [
        # one unit of x motion (dx = 1) into the wall face: the crossing row is y1 + dy / 2
        ((28.5, 10), (0.5, 1), (28.5, 11.5), True),
        # one unit of y motion (dy = 1) into the bottom border: the crossing column is x1 + dx / 2
        ((10, 59.5), (1, 0.5), (11.5, 59.5), True),
        # ending exactly on the left border counts as reaching it
        ((5, 20), (-0.5, 0), (4.5, 20.5), True),
        # starting on a border line and moving along it: stopped at once and nudged inside
        ((4, 20), (0, 1), (4.3, 20.5), True),
        ((60, 20), (0, 1), (59.7, 20.5), True),
        ((20, 4), (1, 0), (20.5, 4.3), True),
        ((20, 60), (1, 0), (20.5, 59.7), True),
        # starting on the right wall face below the door: nudged off the face, away from the wall
        ((35, 20), (0, 1), (35.3, 20.5), True),
        # ending exactly on the door's top or bottom edge inside the band: the edge row is open
        ((32, 32), (0, 1), (32, 34), False),
        ((32, 28), (0, -1), (32, 26), False),
        # starting exactly on the door's bottom edge and moving down: stopped on the edge
        ((32, 26), (0, -1), (32.5, 26.5), True),
        # leaving the door through an edge exactly at a wall face column
        ((29, 33), (0, 1), (29.5, 33.5), True),
        ((35, 33), (0, 1), (35.5, 33.5), True),
        ((35, 27), (0, -1), (35.5, 26.5), True),
        # along the door's edge rows, through the whole band: the door's corners are open
        ((26, 34), (2, 0), (30, 34), False),
        ((26, 26), (2, 0), (30, 26), False),
    ],
)
def test_moves_on_lines_and_edges(position, action, expected, collided):
    nxt, hit = step_one(position, action)
    np.testing.assert_allclose(nxt, expected, rtol=0, atol=1e-12)
    assert hit == collided


@pytest.mark.parametrize(
    "position, action, expected",
    [
        # The move grazes the door's lower corner. It crosses the edge y = 26 at x = 29.042 (in the
        # band, after 0.678 px) and the face x = 29 at y = 25.955 (outside the door, after 0.740 px):
        # the edge comes first, so the dot stops on the edge, not on the face.
        ((29.5, 26.5), (-2.75, -3.0), (29.5 + 0.5 - 5.5 / 12, 26.5)),
        # Edge at x = 29.045 after 0.727 px, face at y = 25.94 after 2.55 px.
        ((30.5, 28.0), (-2.0, -2.75), (29.0 + 0.5 + 0.5 / 11, 26.5)),
        # Upper corner, edge at x = 29.333 after 0.194 px, face at y = 34.2 after 0.583 px.
        ((29.5, 33.9), (-0.5, 0.3), (29.5 + 0.5 - 1 / 6, 33.5)),
    ],
)
def test_the_door_edge_stops_a_move_that_reaches_it_before_the_wall_face(position, action, expected):
    nxt, hit = step_one(position, action)
    np.testing.assert_allclose(nxt, expected, rtol=0, atol=1e-12)
    assert hit


@pytest.mark.parametrize(
    "position, action, wall_x, expected",
    [
        # A dot on the bottom border is stopped where it starts, even by a move through the door that
        # ends exactly on the far wall face (wall 15: faces 12 and 18; wall 49: faces 46 and 52;
        # door 52: rows 48..56). Ending on the far face is not passing it, so the dot stays on its
        # own side: x clamped to [face 18, border 60] or [border 4, face 46].
        ((27.0, 60.0), (-7.5, -3.75), 15, (27.5, 59.7)),
        ((37.0, 60.0), (7.5, -3.75), 49, (37.5, 59.7)),
    ],
)
def test_a_move_ending_on_the_far_wall_face_has_not_passed_the_door(position, action, wall_x, expected):
    nxt, hit = step_one(position, action, wall_x=wall_x, door_y=52)
    np.testing.assert_allclose(nxt, expected, rtol=0, atol=1e-12)
    assert hit


def test_physics_and_rendering_take_array_likes():
    nxt, collided = propose_and_collide([[27.0, 10.0]], [[1.5, 0.0]], [32], [30])
    np.testing.assert_allclose(nxt, [[28.5, 10.5]], rtol=0, atol=1e-12)
    assert collided.tolist() == [True]
    frames = render_frames([[12, 40]], wall_masks([32], [30]))
    assert tuple(frames[0, 40, 12]) == (255, 0, 0)


# --------------------------------------------------------------------------------------------------
# Layouts, seeds, states and success at their limits


@pytest.mark.parametrize("wall_x, door_y", [(8, 30), (56, 30), (32, 9), (32, 55)])
def test_layouts_at_the_limits_are_accepted(wall_x, door_y):
    layout = WallLayout(wall_x, door_y)
    assert (layout.wall_x, layout.door_y) == (wall_x, door_y)


@pytest.mark.parametrize(
    "wall_x, door_y, match",
    [
        (7, 30, r"wall x 7 is outside the frame; valid: integers 8\.\.56"),
        (57, 30, r"wall x 57 is outside the frame; valid: integers 8\.\.56"),
        # the door's rows (y +- 4) would reach a border line
        (32, 8, r"door y 8 is outside the frame; valid: integers 9\.\.55 \(the door's 9 rows"),
        (32, 56, r"door y 56 is outside the frame; valid: integers 9\.\.55 \(the door's 9 rows"),
    ],
)
def test_layouts_past_the_limits_are_refused(wall_x, door_y, match):
    with pytest.raises(ConfigError, match=match):
        WallLayout(wall_x, door_y)


def test_env_info_with_more_than_one_value_is_refused():
    with pytest.raises(ConfigError, match="fix_wall_location must be one integer pixel index"):
        WallLayout.from_env_info({"fix_wall_location": [32, 33], "fix_door_location": 30})


def test_seeds_span_exactly_the_32_bit_range():
    init, goal = sample_init_goal(2**32 - 1, 32)
    assert init.shape == goal.shape == (2,)
    with pytest.raises(ConfigError, match=r"seed must be an integer in \[0, 2\*\*32\), got 4294967296"):
        sample_init_goal(2**32, 32)


def test_success_is_strictly_closer_than_4_5_px_in_x_and_y_only():
    goal = np.array([[30.0, 20.0, 0.0], [30.0, 20.0, 0.0]])
    cur = np.array([[34.5, 20.0, 0.0], [30.0, 21.0, 50.0]])  # exactly 4.5 px; 1 px off, far in a third dimension
    result = evaluate_states(goal, cur)
    assert result["success"].tolist() == [False, True]
    np.testing.assert_allclose(result["state_dist"], [4.5, np.hypot(1.0, 50.0)], rtol=0, atol=1e-12)


def test_states_on_the_frame_edges_are_accepted_and_beyond_refused():
    env = WallBatchEnv(2)
    _, reached = env.reset_to([[0.0, 64.0], [64.0, 0.0]])
    np.testing.assert_array_equal(reached, [[0.0, 64.0], [64.0, 0.0]])
    for bad in ([[-0.001, 10.0], [10.0, 10.0]], [[10.0, 10.0], [10.0, 64.001]]):
        with pytest.raises(ConfigError, match=r"in \[0, 64\]"):
            env.reset_to(bad)


def test_an_empty_batch_is_refused():
    with pytest.raises(ConfigError, match="num_envs must be a positive integer, got 0"):
        WallBatchEnv(0)


@pytest.mark.parametrize("indices", [[-1, 1], [0, 5]])
def test_indices_out_of_range_at_either_end_are_refused(indices):
    env = WallBatchEnv(3)
    with pytest.raises(ConfigError, match=r"env indices must lie in 0\.\.2"):
        env.reset_to([[10.0, 10.0], [20.0, 20.0]], indices=indices)


# --------------------------------------------------------------------------------------------------
# What the batch env keeps between calls


def test_update_env_moves_the_wall_and_the_door_for_physics_and_frames():
    env = WallBatchEnv(2)
    env.update_env([{"fix_wall_location": 40, "fix_door_location": 20}], indices=[1])
    assert [(layout.wall_x, layout.door_y) for layout in env.layouts()] == [(32, 30), (40, 20)]
    obs, _ = env.reset_to([[25.0, 45.0], [25.0, 45.0]])
    black = np.all(obs["visual"] == 0, axis=-1)
    # env 1: band at columns 37..43, door rows 16..24 open; env 0 keeps the default layout
    assert black[1, 30:60, 37:44].all() and not black[1, 16:25, 37:44].any()
    assert not black[1, 30:60, 29:36].any() and black[0, 35:60, 29:36].all()
    # moving 6 px right: env 0 is stopped by its face at 29, env 1 walks freely (its face is at 37)
    _, reached = env.step([[3.0, 0.0], [3.0, 0.0]])
    np.testing.assert_allclose(reached, [[28.5, 45.5], [31.0, 45.0]], rtol=0, atol=1e-12)
    assert env.collided.tolist() == [True, False]


def test_the_collision_flag_follows_each_step_and_reset():
    env = WallBatchEnv(2)
    env.reset_to([[27.0, 10.0], [10.0, 10.0]])
    assert env.collided.tolist() == [False, False]
    env.step([[1.5, 0.0], [1.0, 0.0]])
    assert env.collided.tolist() == [True, False]
    env.step([[0.0, 1.0], [0.0, 1.0]])
    assert env.collided.tolist() == [False, False]
    env.step([[1.5, 0.0], [0.0, 0.0]])
    env.reset_to([[27.0, 10.0], [10.0, 10.0]])
    assert env.collided.tolist() == [False, False]


def test_a_rollout_leaves_the_envs_at_its_last_state_with_its_last_collision():
    env = WallBatchEnv(2)
    actions = [[[1.0, 0.0], [1.0, 0.0], [2.5, 0.0]], [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]]
    obs, states = env.rollout([[21.0, 10.0], [10.0, 10.0]], actions)
    np.testing.assert_array_equal(env.positions, states[:, -1])
    np.testing.assert_allclose(states[:, -1], [[28.5, 10.5], [14.0, 12.0]], rtol=0, atol=1e-12)
    assert env.collided.tolist() == [True, False]
    # stepping on continues from there
    _, reached = env.step([[0.0, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(reached, [[28.5, 12.5], [14.0, 14.0]], rtol=0, atol=1e-12)


def test_a_rollout_of_no_actions_returns_the_initial_frame():
    env = WallBatchEnv(2)
    obs, states = env.rollout([[10.0, 10.0], [50.0, 50.0]], np.zeros((2, 0, 2)))
    assert obs["visual"].shape == (2, 1, 65, 65, 3) and states.shape == (2, 1, 2)
    np.testing.assert_array_equal(states[:, 0], [[10.0, 10.0], [50.0, 50.0]])
    assert env.collided.tolist() == [False, False]


def test_batch_methods_take_nested_lists():
    env = WallBatchEnv(1)
    env.reset_to([[27.0, 10.0]])
    _, reached = env.step([[1.5, 0.0]])
    np.testing.assert_allclose(reached, [[28.5, 10.5]], rtol=0, atol=1e-12)
    _, states = env.rollout([[10.0, 10.0]], [[[1.0, 0.0], [0.0, 1.0]]])
    np.testing.assert_allclose(states[0], [[10.0, 10.0], [12.0, 10.0], [12.0, 12.0]], rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# The single env: its state, its last frame and its spaces


def test_the_single_env_reports_its_state_and_renders_its_last_frame():
    env = WallEnv(render_mode="rgb_array")
    obs, info = env.reset(seed=3)
    np.testing.assert_array_equal(env.state, info["state"])
    np.testing.assert_array_equal(env.render(), obs["visual"])
    obs, _, _, _, info = env.step([1.0, 0.5])
    np.testing.assert_array_equal(env.state, info["state"])
    np.testing.assert_array_equal(env.render(), obs["visual"])
    obses, _, _, infos = env.step_multiple([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    np.testing.assert_array_equal(env.render(), obses["visual"][-1])
    np.testing.assert_array_equal(env.state, infos["state"][-1])
    rolled, states = env.rollout(0, [20.0, 12.0], [[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_array_equal(env.render(), rolled["visual"][-1])
    assert not np.array_equal(rolled["visual"][-1], rolled["visual"][-2])
    assert WallEnv().render() is None  # no render mode, no frame


def test_step_multiple_returns_each_steps_proprio_and_continues_from_the_current_state():
    env = WallEnv()
    env.prepare(0, np.array([10.0, 10.0]))
    obses, _, _, infos = env.step_multiple([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    expected = [[12.0, 10.0], [14.0, 10.0], [14.0, 12.0]]
    np.testing.assert_array_equal(obses["proprio"], np.array(expected, np.float32))
    np.testing.assert_array_equal(infos["state"], expected)
    obses, _, _, infos = env.step_multiple([[1.0, 0.0]])
    np.testing.assert_array_equal(infos["state"], [[16.0, 12.0]])


def test_step_multiple_before_any_reset_is_refused():
    with pytest.raises(RuntimeError, match=r"step\(\) before reset_to\(\)"):
        WallEnv().step_multiple(np.zeros((2, 2)))


def test_the_proprio_space_spans_the_valid_states():
    proprio = WallEnv().observation_space["proprio"]
    np.testing.assert_array_equal(proprio.low, [0.0, 0.0])
    np.testing.assert_array_equal(proprio.high, [64.0, 64.0])


def test_unseeded_resets_draw_from_the_full_seed_range():
    env = WallEnv()
    env.reset(seed=0)
    starts = {tuple(env.reset()[1]["state"]) for _ in range(100)}
    assert len(starts) == 100
