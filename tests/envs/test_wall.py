"""Wall (DotWall) env: geometry, rendering, sampling, success, determinism and the two APIs."""

from __future__ import annotations

import math

import gymnasium
from gymnasium.utils.env_checker import check_env
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wmquant.envs import make, make_batch
from wmquant.envs.wall import (
    IMG_SIZE,
    WallBatchEnv,
    WallEnv,
    propose_and_collide,
    render_frames,
    wall_masks,
)
from wmquant.errors import ConfigError


# --------------------------------------------------------------------------------------------------
# An independent, literal scalar transcription of spec 1.6 (upstream's check_wall_intersect),
# valid for non-degenerate moves (dx != 0, dy != 0), which is where upstream is well defined.


def _sign(v: float) -> int:
    return (v > 0) - (v < 0)


def reference_step(p1, action, wall_x, hole_y):
    p1 = (float(p1[0]), float(p1[1]))
    p2 = (p1[0] + 2 * float(action[0]), p1[1] + 2 * float(action[1]))
    slope = (p2[1] - p1[1]) / (p2[0] - p1[0])
    intercept = p1[1] - slope * p1[0]
    left_corner, right_corner = wall_x - 3, wall_x + 3
    door_bot, door_top = hole_y - 4, hole_y + 4
    if p2[1] - p1[1] > 0 and p2[1] > door_top and p1[1] < door_top:
        x = (door_top - intercept) / slope
        if left_corner <= x <= right_corner:
            return (x + 0.5, door_top - 0.5), True
    if p2[1] - p1[1] < 0 and p2[1] < door_bot and p1[1] > door_bot:
        x = (door_bot - intercept) / slope
        if left_corner <= x <= right_corner:
            return (x + 0.5, door_bot + 0.5), True
    left, left_hole, right, right_hole = 4, None, 60, None
    if wall_x > p1[0]:
        right, right_hole = wall_x - 3, hole_y
    else:
        left, left_hole = wall_x + 3, hole_y

    def vertical(line, hole):
        if _sign(p1[0] - line) * _sign(p2[0] - line) <= 0.1:
            y = slope * line + intercept
            if hole is None or y < hole - 4 or y > hole + 4:
                return (line, y)
        return None

    def horizontal(line):
        if _sign(p1[1] - line) * _sign(p2[1] - line) <= 0.1:
            return ((line - intercept) / slope, line)
        return None

    v_hit = vertical(left, left_hole) or vertical(right, right_hole)
    h_hit = horizontal(4) or horizontal(60)
    if v_hit and (not h_hit or math.dist(p1, v_hit) < math.dist(p1, h_hit)):
        hit, offset = v_hit, (0.5 * _sign(p1[0] - v_hit[0]), 0.5)
    elif h_hit:
        hit, offset = h_hit, (0.5, 0.5 * _sign(p1[1] - h_hit[1]))
    else:
        return p2, False
    qx, qy = hit[0] + offset[0], hit[1] + offset[1]
    qx, qy = min(max(qx, left), right), min(max(qy, 4), 60)
    if qx <= left:
        qx = left + 0.3
    if qx >= right:
        qx = right - 0.3
    if qy <= 4:
        qy = 4.3
    if qy >= 60:
        qy = 59.7
    return (qx, qy), True


def step_one(position, action, wall_x=32, door_y=30):
    nxt, collided = propose_and_collide(
        np.array([position], float), np.array([action], float), np.array([wall_x]), np.array([door_y])
    )
    return nxt[0], bool(collided[0])


def in_solid_wall(x, y, wall_x, door_y):
    return abs(x - wall_x) <= 3 and abs(y - door_y) > 4


def side(x, wall_x):
    return -1 if x < wall_x - 3 else (1 if x > wall_x + 3 else 0)


# --------------------------------------------------------------------------------------------------
# Geometry


@pytest.mark.parametrize(
    "position, action, expected, collided",
    [
        ((10, 10), (1, 0.5), (12, 11), False),  # free move: p + 2a
        ((27, 10), (1.5, 0), (28.5, 10.5), True),  # wall face below the door: back 0.5, along +0.5
        ((27, 30), (2, 0), (31, 30), False),  # through the door
        ((6, 30), (-2, 0), (4.5, 30.5), True),  # left border
        ((6, 6), (-2, -2), (4.5, 4.5), True),  # corner: equal distances -> the horizontal hit wins
        ((30, 33), (0.5, 1), (31.0, 33.5), True),  # leaves the door through its top edge in the band
        ((30, 27), (0.5, -1), (31.0, 26.5), True),  # ... through its bottom edge
        ((28.8, 5), (0.2, -1), (28.7, 4.5), True),  # horizontal hit clamped to the wall face, nudged 0.3
        ((50, 58), (1, 2), (51.5, 59.5), True),  # bottom border
    ],
)
def test_hand_computed_moves(position, action, expected, collided):
    nxt, hit = step_one(position, action)
    np.testing.assert_allclose(nxt, expected, atol=1e-12)
    assert hit == collided


@pytest.mark.parametrize(
    "position, action, expected",
    [
        ((10, 6), (0, -2), (10.5, 4.5)),  # purely vertical into the top border (upstream: NaN x)
        ((27, 20), (1, 0), (28.5, 20.5)),  # purely horizontal, touching the wall face
        ((32, 32), (0, 2), (32.5, 33.5)),  # purely vertical out of the door (upstream: into the wall)
        ((32, 34), (0, 1), (32.5, 33.5)),  # starting exactly on the door's edge (upstream: into the wall)
        ((20, 20), (0, 0), (20, 20)),  # no move
        ((4.3, 20), (0, 3), (4.3, 26)),  # along the border without touching it
    ],
)
def test_axis_aligned_moves_are_finite_and_blocked(position, action, expected):
    nxt, _ = step_one(position, action)
    assert np.all(np.isfinite(nxt))
    np.testing.assert_allclose(nxt, expected, atol=1e-12)


def test_long_move_through_the_door_stays_in_the_frame():
    # 40 px to the right through the door: upstream checks neither the far border nor the far side.
    nxt, hit = step_one((27, 30), (20, 0.5))
    assert hit and 35 < nxt[0] <= 60 and 4 <= nxt[1] <= 60


def test_long_move_hitting_the_face_before_the_door_edge_is_stopped_at_the_face():
    # Wall 20 (faces 17, 23), door rows 28..36. The move meets the face x = 17 at y = 36.645, just
    # outside the door, and crosses the door's edge y = 28 only later (inside the band), where
    # upstream's early door-edge check would place the dot, past the wall.
    nxt, hit = step_one((8, 50), (15.5, -23), wall_x=20, door_y=32)
    y_at_face = 50 - 46 * 9 / 31
    np.testing.assert_allclose(nxt, (16.5, y_at_face + 0.5), atol=1e-12)
    assert hit


def test_matches_literal_transcription_of_spec_on_random_moves():
    rng = np.random.default_rng(1)
    n = 4000
    wall_x, door_y = rng.integers(20, 45, n), rng.integers(10, 55, n)
    start = rng.uniform(4.3, 59.7, (n, 2))
    keep = np.array([not in_solid_wall(x, y, w, d) for (x, y), w, d in zip(start, wall_x, door_y)])
    start, wall_x, door_y = start[keep], wall_x[keep], door_y[keep]
    actions = rng.normal(0, 2.0, (len(start), 2))  # moves up to ~16 px: upstream's rule is sound there
    ours, collided = propose_and_collide(start, actions, wall_x, door_y)
    hits = 0
    for i in range(len(start)):
        expected, expected_hit = reference_step(start[i], actions[i], int(wall_x[i]), int(door_y[i]))
        np.testing.assert_allclose(ours[i], expected, atol=1e-9, err_msg=f"case {i}")
        assert collided[i] == expected_hit
        hits += expected_hit
    assert hits > 300  # the sample exercises collisions, not just free moves


# Integers and halves make starts and moves land exactly on wall lines and door edges; zeros give
# axis-aligned moves; the float range includes moves long enough to pass the door and reach a border.
coordinate = st.one_of(st.floats(4.3, 59.7, allow_nan=False), st.integers(5, 59).map(float))
component = st.one_of(
    st.floats(-25, 25, allow_nan=False), st.integers(-16, 16).map(lambda k: k / 2), st.just(0.0)
)


@settings(max_examples=400, deadline=None)
@given(
    wall_x=st.integers(20, 44),
    door_y=st.integers(10, 54),
    start=st.tuples(coordinate, coordinate),
    actions=st.lists(st.tuples(component, component), min_size=1, max_size=25),
)
def test_dot_stays_in_the_frame_and_crosses_only_through_the_door(wall_x, door_y, start, actions):
    if in_solid_wall(*start, wall_x, door_y):
        start = (wall_x - 8.0, start[1])
    position = np.array(start, float)
    for action in actions:
        nxt, _ = step_one(position, action, wall_x, door_y)
        assert np.all(np.isfinite(nxt))
        assert 4 <= nxt[0] <= 60 and 4 <= nxt[1] <= 60, (position, action, nxt)
        assert not in_solid_wall(nxt[0], nxt[1], wall_x, door_y), (position, action, nxt)
        if side(position[0], wall_x) * side(nxt[0], wall_x) == -1:
            # jumped from one side to the other: the displacement passed both wall faces inside the
            # door (give or take the 0.5 px offset a blocked dot is placed with)
            for face in (wall_x - 3, wall_x + 3):
                t = (face - position[0]) / (nxt[0] - position[0])
                y = position[1] + t * (nxt[1] - position[1])
                assert door_y - 4.5 <= y <= door_y + 4.5, (position, action, nxt)
        position = nxt


# --------------------------------------------------------------------------------------------------
# Rendering


def reference_render(position, wall_x=32, door_y=30):
    """Spec 1.4 literally: full 2-D Gaussian in float64, peak-normalised, trunc to uint8."""
    rows, cols = np.meshgrid(np.arange(IMG_SIZE), np.arange(IMG_SIZE), indexing="ij")
    sq = (cols - position[0]) ** 2 + (rows - position[1]) ** 2
    dot = np.exp(-sq / (2 * 1.7**2)) / (2 * np.pi * 1.7**2)
    intensity = (dot / dot.max() * 255).astype(np.uint8)
    walls = (np.abs(cols - wall_x) <= 3) & ~(np.abs(rows - door_y) <= 4)
    walls[:, [4, 60]] = True
    walls[[4, 60], :] = True
    image = np.stack([np.full_like(intensity, 255), 255 - intensity, 255 - intensity], axis=-1)
    image[walls] = 0
    return image


def test_render_matches_the_literal_formula():
    rng = np.random.default_rng(0)
    positions = rng.uniform(4.3, 59.7, (40, 2))
    masks = wall_masks(np.full(40, 32), np.full(40, 30))
    frames = render_frames(positions, masks)
    assert frames.shape == (40, 65, 65, 3) and frames.dtype == np.uint8
    differing = 0
    for frame, position in zip(frames, positions):
        expected = reference_render(position)
        assert np.abs(frame.astype(int) - expected).max() <= 1  # rounding at exact integer boundaries only
        differing += int((frame != expected).sum())
    assert differing <= 5


def test_render_layout_colours_and_peak():
    frame = render_frames(np.array([[12.0, 40.0]]), wall_masks(np.array([32]), np.array([30])))[0]
    black = np.all(frame == 0, axis=-1)
    assert black[:, 4].all() and black[:, 60].all() and black[4, :].all() and black[60, :].all()
    assert black[10:26, 29:36].all() and black[35:60, 29:36].all()  # wall band, 7 columns
    assert not black[26:35, 29:36].any()  # door rows 26..34 are open
    assert not black[5:60, 28].any() and not black[5:60, 36].any()
    assert tuple(frame[40, 12]) == (255, 0, 0)  # the peak pixel is pure red
    assert np.all(frame[~black][:, 0] == 255)  # red channel stays 255 off the walls
    assert np.array_equal(frame[..., 1], frame[..., 2])
    assert tuple(frame[10, 50]) == (255, 255, 255)  # far from the dot: white


def test_dot_is_not_drawn_over_walls():
    # a dot centred on the border line: the line stays black
    frame = render_frames(np.array([[4.0, 30.0]]), wall_masks(np.array([32]), np.array([30])))[0]
    assert np.all(frame[:, 4] == 0)
    assert tuple(frame[30, 5]) != (255, 255, 255)


# --------------------------------------------------------------------------------------------------
# Sampling, success


def test_init_goal_sampler_follows_randomstate_draw_order():
    env = WallEnv()
    for seed in (0, 1, 99, 12345):
        rs = np.random.RandomState(seed)
        start_x, target_x = rs.uniform(7.4, 25.6), rs.uniform(38.4, 56.6)
        start_y, target_y = rs.uniform(7.4, 56.6), rs.uniform(7.4, 56.6)
        if rs.uniform(0, 1) < 0.5:
            start_x, target_x = target_x, start_x
        init, goal = env.sample_random_init_goal_states(seed)
        np.testing.assert_allclose(init, [start_x, start_y], rtol=0, atol=1e-12)
        np.testing.assert_allclose(goal, [target_x, target_y], rtol=0, atol=1e-12)
        assert init.dtype == np.float64


def test_sampler_uses_the_current_wall_and_puts_init_and_goal_on_opposite_sides():
    env = WallEnv()
    env.update_env({"fix_wall_location": torch.tensor([40]), "fix_door_location": torch.tensor([20])})
    for seed in range(200):
        init, goal = env.sample_random_init_goal_states(seed)
        assert sorted([side(init[0], 40), side(goal[0], 40)]) == [-1, 1]
        for x in (init[0], goal[0]):
            assert 7.4 <= x <= 40 - 3 - 3.4 or 40 + 3 + 3.4 <= x <= 56.6


@pytest.mark.parametrize("distance, success", [(4.49, True), (4.51, False), (0.0, True)])
def test_success_threshold(distance, success):
    env = WallEnv()
    angle = 0.7
    goal = np.array([30.0, 20.0])
    cur = goal + distance * np.array([math.cos(angle), math.sin(angle)])
    result = env.eval_state(goal, cur)
    assert result["success"] is success
    assert result["state_dist"] == pytest.approx(distance, abs=1e-12)
    batch = make_batch("wall", 2).eval_state(np.stack([goal, goal]), np.stack([cur, goal]))
    assert batch["success"].tolist() == [success, True]


# --------------------------------------------------------------------------------------------------
# APIs, determinism


@pytest.mark.filterwarnings("ignore:.*Box action space")  # unbounded actions, as upstream
def test_gymnasium_api():
    env = make("wall")
    assert isinstance(env, gymnasium.Env)
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    assert obs["visual"].shape == (65, 65, 3) and obs["visual"].dtype == np.uint8
    np.testing.assert_allclose(obs["proprio"], info["state"].astype(np.float32))
    obs, reward, terminated, truncated, info = env.step(np.array([0.5, -0.25], np.float32))
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert set(info) == {"state", "pos_agent"}
    assert env.observation_space.contains(obs)
    check_env(env.unwrapped, skip_render_check=True)


def test_seeded_reset_and_rollout_are_deterministic():
    a, b = WallEnv(), WallEnv()
    obs_a, info_a = a.reset(seed=11)
    obs_b, info_b = b.reset(seed=11)
    assert np.array_equal(obs_a["visual"], obs_b["visual"]) and np.array_equal(info_a["state"], info_b["state"])
    np.testing.assert_array_equal(info_a["state"], a.sample_random_init_goal_states(11)[0])
    actions = np.random.default_rng(0).normal(0, 1.5, (30, 2))
    first = a.rollout(5, info_a["state"], actions)
    second = b.rollout(5, info_a["state"], actions)
    assert np.array_equal(first[1], second[1]) and np.array_equal(first[0]["visual"], second[0]["visual"])


def test_rollout_includes_the_initial_frame_and_matches_stepping():
    env = WallEnv()
    init = np.array([20.0, 12.0])
    actions = np.random.default_rng(2).normal(0, 1.5, (12, 2))
    obses, states = env.rollout(0, init, actions)
    assert obses["visual"].shape == (13, 65, 65, 3) and states.shape == (13, 2)
    obs0, state0 = env.prepare(0, init)
    assert np.array_equal(obses["visual"][0], obs0["visual"]) and np.array_equal(states[0], init)
    stepped, rewards, dones, infos = env.step_multiple(actions)
    assert np.array_equal(stepped["visual"], obses["visual"][1:])
    assert np.array_equal(infos["state"], states[1:]) and np.array_equal(infos["pos_agent"], states[1:])
    assert rewards.shape == dones.shape == (12,) and not dones.any()
    env.prepare(0, init)
    for t, action in enumerate(actions):
        obs, _, _, _, info = env.step(action)
        assert np.array_equal(info["state"], states[t + 1]) and np.array_equal(obs["visual"], obses["visual"][t + 1])


def test_batch_env_matches_single_envs_and_respects_indices():
    rng = np.random.default_rng(4)
    layouts = [{"fix_wall_location": w, "fix_door_location": d} for w, d in [(32, 30), (25, 15), (40, 45)]]
    batch = WallBatchEnv(3)
    batch.update_env(layouts)
    inits = np.array([[10.0, 10.0], [50.0, 50.0], [20.0, 44.0]])
    actions = rng.normal(0, 1.5, (3, 20, 2))
    obses, states = batch.rollout(inits, actions)
    for i, layout in enumerate(layouts):
        single = WallEnv()
        single.update_env(layout)
        single_obs, single_states = single.rollout(0, inits[i], actions[i])
        assert np.array_equal(single_states, states[i])
        assert np.array_equal(single_obs["visual"], obses["visual"][i])
    # persistent state: reset_to + steps == rollout, and stepping a subset leaves the rest alone
    batch.reset_to(inits)
    for t in range(20):
        batch.step(actions[[0, 2], t], indices=[0, 2])
    np.testing.assert_array_equal(batch.positions[[0, 2]], states[[0, 2], -1])
    np.testing.assert_array_equal(batch.positions[1], inits[1])


def test_batch_sampler_and_layout_per_env():
    batch = make_batch("wall", 2)
    batch.update_env([{"fix_wall_location": 40, "fix_door_location": 30}], indices=[1])
    init, goal = batch.sample_random_init_goal_states([7, 7])
    assert np.array_equal(init[0], WallEnv().sample_random_init_goal_states(7)[0])
    assert np.array_equal(init[1], WallEnv(wall_x=40).sample_random_init_goal_states(7)[0])
    assert not np.array_equal(init[0], init[1])


@pytest.mark.parametrize(
    "call",
    [
        lambda env: env.update_env({"fix_wall_location": 70, "fix_door_location": 30}),
        lambda env: env.update_env({"fix_wall_location": 32.5, "fix_door_location": 30}),
        lambda env: env.update_env({"fix_door_location": 30}),
        lambda env: env.prepare(0, np.array([np.nan, 3.0])),
        lambda env: env.prepare(0, np.array([10.0, 80.0])),
        lambda env: env.sample_random_init_goal_states(-1),
        lambda env: env.reset(options={"init": [1, 2]}),
    ],
)
def test_bad_input_raises_config_error(call):
    with pytest.raises(ConfigError):
        call(WallEnv())


def test_make_rejects_unknown_env():
    with pytest.raises(ConfigError, match="valid envs"):
        make("maze")
