"""PushT env: physics constants, reset-to-state exactness, success criterion, determinism, rendering,
and the batched env against the single one."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from wmquant.envs import make, make_batch
from wmquant.envs import pusht
from wmquant.envs import pusht_render
from wmquant.errors import ConfigError

TWO_PI = 2 * math.pi


def random_states(rng: np.random.Generator, count: int) -> np.ndarray:
    """States anywhere in the arena, with any angle in [0, 2pi) and nonzero agent velocity."""
    return np.column_stack(
        [
            rng.uniform(30, 480, (count, 2)),
            rng.uniform(100, 400, (count, 2)),
            rng.uniform(0, TWO_PI, count),
            rng.normal(0, 60, (count, 2)),
        ]
    )


@pytest.fixture(scope="module")
def env():
    return make("pusht", render_size=64, reset_mode="exact")


# ---- reset-to-state ---------------------------------------------------------------------------


def test_reset_to_state_reproduces_the_state_exactly(env):
    for state in random_states(np.random.default_rng(0), 60):
        obs, reached = env.prepare(seed=0, init_state=state)
        np.testing.assert_allclose(reached, state, rtol=0, atol=1e-6)
        np.testing.assert_allclose(obs["proprio"], state[[0, 1, 5, 6]].astype(np.float32), rtol=0, atol=1e-3)
        assert reached.dtype == np.float64 and obs["proprio"].dtype == np.float32


def test_upstream_reset_takes_one_bare_10ms_physics_step():
    """Upstream's reset-to-state: place the bodies, then one 10 ms step with no PD update, so the
    agent moves by velocity x 0.01 and keeps its velocity; the block, out of contact, stays put."""
    upstream = make("pusht", render_size=64)
    assert upstream.reset_mode == "upstream"
    rng = np.random.default_rng(1)
    for _ in range(20):
        state = np.array([rng.uniform(60, 120), rng.uniform(60, 120), 350.0, 350.0, rng.uniform(0, TWO_PI), *rng.normal(0, 75, 2)])
        _, reached = upstream.prepare(seed=0, init_state=state)
        expected = state.copy()
        expected[0:2] += 0.01 * state[5:7]
        np.testing.assert_allclose(reached, expected, rtol=0, atol=1e-9)
    # the same state through the exact mode is unmoved, and at rest both modes agree
    at_rest = np.array([100.0, 100.0, 350.0, 350.0, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(upstream.prepare(0, at_rest)[1], make("pusht", reset_mode="exact").prepare(0, at_rest)[1], atol=1e-12)


def test_upstream_reset_starts_resolving_an_overlap_before_the_first_action():
    """In the settling step pymunk finds the overlap and gives the block the separating impulse (it
    moves at the next step's position update), so the first action starts from a different physical
    state than after an exact reset, though both report the requested pose."""
    overlapping = np.array([256.0, 262.0, 256.0, 250.0, 0.0, 0.0, 0.0])  # the agent's disc inside the crossbar
    exact_env, upstream_env = make("pusht", render_size=16, reset_mode="exact"), make("pusht", render_size=16)
    _, exact = exact_env.prepare(0, overlapping)
    _, upstream = upstream_env.prepare(0, overlapping)
    np.testing.assert_allclose(exact, overlapping, atol=1e-9)
    np.testing.assert_allclose(upstream, overlapping, atol=1e-9)  # at rest: the agent did not move
    after_exact = exact_env.step(np.zeros(2))[4]["state"]
    after_upstream = upstream_env.step(np.zeros(2))[4]["state"]
    assert np.linalg.norm(after_upstream[2:4] - after_exact[2:4]) > 0.01


def test_reset_mode_reaches_the_batched_env_and_rejects_unknown_modes():
    state = np.array([[100.0, 100.0, 350.0, 350.0, 0.5, 80.0, -40.0]])
    batch = make_batch("pusht", 1, render_size=16, workers=0)
    _, reached = batch.reset_to(state)
    np.testing.assert_allclose(reached[0, :2], [100.8, 99.6], atol=1e-9)
    _, reached = make_batch("pusht", 1, render_size=16, workers=0, reset_mode="exact").reset_to(state)
    np.testing.assert_allclose(reached[0], state[0], atol=1e-9)
    with pytest.raises(ConfigError, match="reset_mode 'settle'.*upstream, exact"):
        make("pusht", reset_mode="settle")


def test_reset_wraps_the_angle_and_pads_5d_states(env):
    _, reached = env.prepare(seed=0, init_state=[200.0, 100.0, 250.0, 300.0, -0.5])
    np.testing.assert_allclose(reached, [200, 100, 250, 300, TWO_PI - 0.5, 0, 0], atol=1e-9)


def test_reset_places_the_local_origin_not_the_centre_of_gravity(env):
    # the T's top-centre lands on (x, y) for any angle: check a world vertex of the crossbar
    angle = 1.0
    env.prepare(seed=0, init_state=[100.0, 100.0, 250.0, 260.0, angle, 0.0, 0.0])
    crossbar = env.scene().block_parts[0]
    expected = np.array([250.0, 260.0]) + np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]) @ [60.0, 30.0]
    assert min(np.linalg.norm(np.asarray(v) - expected) for v in crossbar) < 1e-9


# ---- success criterion ------------------------------------------------------------------------


def pose(ax=100.0, ay=100.0, bx=250.0, by=250.0, angle=1.0, vx=0.0, vy=0.0):
    return np.array([ax, ay, bx, by, angle, vx, vy])


@pytest.mark.parametrize(
    "cur, success",
    [
        (pose(bx=250 + 19.99), True),
        (pose(bx=250 + 20.01), False),
        (pose(ax=100 + 12.0, by=250 + 15.99), True),  # joint norm sqrt(12^2 + 15.99^2) < 20
        (pose(ax=100 + 12.0, by=250 + 16.01), False),
        (pose(angle=1.0 + math.pi / 9 - 1e-9), True),
        (pose(angle=1.0 + math.pi / 9 + 1e-9), False),
        (pose(vx=500.0, vy=-500.0), True),  # velocities do not count for success
    ],
)
def test_success_at_its_thresholds(env, cur, success):
    assert env.eval_state(pose(), cur)["success"] is success


@pytest.mark.parametrize(
    "goal_angle, cur_angle, success",
    [
        (0.01, TWO_PI - (math.pi / 9 - 0.01) + 1e-9, True),  # wrap-around near 0 / 2pi
        (0.01, TWO_PI - (math.pi / 9 - 0.01) - 1e-9, False),
        (TWO_PI - 0.05, 0.05, True),
        (-0.1, TWO_PI - 0.1, True),  # the same angle written two ways
        (-5.0, 2.0, False),  # |diff| = 7 > 2pi: wrapped 0.717 rad (upstream's formula gives -0.717 < pi/9)
        (4 * math.pi + 0.2, 0.2 + math.pi / 9 - 1e-9, True),
    ],
)
def test_angle_difference_wraps_for_any_angles(env, goal_angle, cur_angle, success):
    assert env.eval_state(pose(angle=goal_angle), pose(angle=cur_angle))["success"] is success


def test_state_dist_is_the_norm_over_all_seven_dims(env):
    goal, cur = pose(), pose(ax=103.0, by=254.0, angle=1.5, vx=12.0)
    expected = math.sqrt(3**2 + 4**2 + 0.5**2 + 12**2)
    assert env.eval_state(goal, cur)["state_dist"] == pytest.approx(expected, abs=1e-12)
    batch = pusht.eval_states(np.stack([goal, goal]), np.stack([cur, goal]))
    np.testing.assert_allclose(batch["state_dist"], [expected, 0.0], atol=1e-12)
    assert batch["success"].tolist() == [False, True]  # 0.5 rad apart


# ---- physics ----------------------------------------------------------------------------------


def test_block_has_upstream_mass_properties_and_frictionless_contacts(env):
    env.prepare(seed=0, init_state=pose())
    assert env._block.mass == 1.0 and env._block.moment == 3000.0
    assert tuple(env._block.center_of_gravity) == (0.0, 45.0)
    assert env._space.damping == 0.0
    shapes = list(env._block.shapes) + list(env._agent.shapes)
    assert all(s.friction == 0.0 and s.elasticity == 0.0 for s in shapes)
    assert env._agent.body_type == env._agent.KINEMATIC


def reference_agent_step(position, velocity, action):
    """The PD controller and kinematic integration of spec 2.3, written out for one free step."""
    target = position + 100.0 * np.asarray(action)
    dt = 0.01
    for _ in range(10):
        velocity = velocity + (100.0 * (target - position) + 20.0 * (0.0 - velocity)) * dt
        position = position + velocity * dt
    return position, velocity


def test_free_agent_follows_the_relative_pd_controller(env):
    start = pose(ax=100.0, ay=400.0, bx=350.0, by=150.0, vx=30.0, vy=-10.0)  # block far away
    env.prepare(seed=0, init_state=start)
    position, velocity = start[0:2], start[5:7]
    for action in ([0.2, -0.1], [0.0, 0.0], [-0.05, 0.3]):
        _, _, _, _, info = env.step(np.array(action))
        position, velocity = reference_agent_step(position, velocity, action)
        np.testing.assert_allclose(info["state"][0:2], position, atol=1e-9)
        np.testing.assert_allclose(info["state"][5:7], velocity, atol=1e-9)
        np.testing.assert_array_equal(info["state"][2:5], start[2:5])  # untouched block stays put


def test_agent_pushes_the_block_and_the_block_stops_when_contact_ends(env):
    # agent left of the stem's side (T upright: stem spans x in [235, 265] below y = 280)
    env.prepare(seed=0, init_state=pose(ax=200.0, ay=340.0, bx=250.0, by=250.0, angle=0.0))
    for _ in range(8):
        _, _, _, _, info = env.step(np.array([0.2, 0.0]))
    assert info["state"][2] > 255.0  # pushed to +x
    for _ in range(5):  # pull back: quasi-static block, nothing carries it on
        _, _, _, _, info = env.step(np.array([-0.3, 0.0]))
    block_before = info["state"][2:5].copy()
    _, _, _, _, info = env.step(np.array([-0.3, 0.0]))
    np.testing.assert_array_equal(info["state"][2:5], block_before)


def test_step_rejects_bad_actions(env):
    env.prepare(seed=0, init_state=pose())
    with pytest.raises(ConfigError, match="shape"):
        env.step(np.zeros(3))
    with pytest.raises(ConfigError, match="finite"):
        env.step(np.array([np.nan, 0.0]))


# ---- seeding and determinism ------------------------------------------------------------------


def test_random_init_goal_states_follow_upstream_draw_order():
    init, goal = pusht.sample_init_goal_states(42)
    random_state = np.random.RandomState(42)
    for state in (init, goal):
        expected_xy = [random_state.randint(50, 450), random_state.randint(50, 450), random_state.randint(100, 400), random_state.randint(100, 400)]
        expected_angle = (random_state.randn() * TWO_PI - math.pi) % TWO_PI
        np.testing.assert_array_equal(state[:4], expected_xy)
        assert state[4] == pytest.approx(expected_angle, abs=1e-12) and 0 <= state[4] < TWO_PI
        np.testing.assert_array_equal(state[5:], [0.0, 0.0])


def test_seeded_resets_are_deterministic(env):
    obs_a, info_a = env.reset(seed=7)
    env.reset(seed=8)
    obs_b, info_b = env.reset(seed=7)
    np.testing.assert_array_equal(info_a["state"], info_b["state"])
    np.testing.assert_array_equal(obs_a["visual"], obs_b["visual"])
    assert not np.array_equal(info_a["state"], env.reset(seed=8)[1]["state"])


def test_rollouts_are_deterministic_and_history_free(env):
    rng = np.random.default_rng(1)
    init = pusht.sample_init_goal_states(3)[0]
    actions = rng.normal(0, 0.3, (25, 2))
    obs_a, states_a = env.rollout(1, init, actions)
    env.rollout(2, random_states(rng, 1)[0], rng.normal(0, 0.3, (15, 2)))  # something else in between
    obs_b, states_b = env.rollout(1, init, actions)
    obs_c, states_c = make("pusht", render_size=64).rollout(1, init, actions)
    assert states_a.shape == (26, 7) and obs_a["visual"].shape == (26, 64, 64, 3) and obs_a["proprio"].shape == (26, 4)
    np.testing.assert_allclose(states_a[0], init, atol=1e-6)
    for states, obs in ((states_b, obs_b), (states_c, obs_c)):
        np.testing.assert_array_equal(states, states_a)
        np.testing.assert_array_equal(obs["visual"], obs_a["visual"])


def test_step_multiple_matches_stepping(env):
    actions = np.random.default_rng(2).normal(0, 0.2, (6, 2))
    init = pose(ax=220.0, ay=200.0)
    env.prepare(0, init)
    obses, rewards, dones, infos = env.step_multiple(actions)
    _, states = env.rollout(0, init, actions)
    np.testing.assert_array_equal(infos["state"], states[1:])
    assert obses["visual"].shape == (6, 64, 64, 3) and rewards.shape == (6,) and not dones.any()


# ---- gymnasium API, rendering, reward ---------------------------------------------------------


def test_gymnasium_api(env):
    obs, info = env.reset(seed=3, options={"init_state": pose(), "env_info": {"shape": "T"}})
    assert env.observation_space.contains(obs)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample() * 0 + 0.01)
    assert env.observation_space.contains(obs) and not terminated and not truncated
    assert 0.0 <= reward <= 1.0
    np.testing.assert_array_equal(env.render(), obs["visual"])
    with pytest.raises(ConfigError, match="reset options"):
        env.reset(options={"state": pose()})
    with pytest.raises(ConfigError, match="shape"):
        env.update_env({"shape": "nonexistent"})
    with pytest.raises(ConfigError, match="render_size"):
        make("pusht", render_size=0)


def test_reward_is_coverage_of_the_goal(env):
    goal_x, goal_y, goal_angle = pusht.GOAL_POSE
    _, info = env.reset(options={"init_state": pose(ax=60, ay=60, bx=goal_x, by=goal_y, angle=goal_angle)})
    assert info["coverage"] == pytest.approx(1.0, abs=1e-9)
    _, _, _, _, info = env.step(np.zeros(2))
    assert info["coverage"] == pytest.approx(1.0, abs=1e-9)
    _, info = env.reset(options={"init_state": pose(ax=60, ay=60, bx=120, by=120, angle=0.0)})
    assert info["coverage"] == 0.0


def test_coverage_matches_a_raster_estimate():
    scale = 4  # raster cells per px

    def raster(parts):
        mask = np.zeros((512 * scale, 512 * scale), np.uint8)
        for part in parts:
            cv2.fillPoly(mask, [np.round(np.asarray(part) * scale * 16).astype(np.int32)], 1, shift=4)
        return mask.astype(bool)

    rng = np.random.default_rng(5)
    goal = [np.asarray(p) for p in pusht._goal_parts(pusht.TEE)]
    goal_mask = raster(goal)
    env_ = make("pusht", render_size=16)
    for _ in range(3):
        env_.reset(options={"init_state": pose(ax=60, ay=60, bx=256 + rng.uniform(-30, 30), by=256 + rng.uniform(-30, 30), angle=rng.uniform(0, TWO_PI))})
        block = [np.asarray(p) for p in env_._block_world_parts()]
        expected = (raster(block) & goal_mask).sum() / goal_mask.sum()
        assert 0.05 < expected < 0.95
        assert pusht.coverage(block, goal) == pytest.approx(expected, abs=0.01)


def test_rendering_colours_and_layout():
    big = make("pusht", render_size=512)
    obs, _ = big.reset(options={"init_state": pose(ax=100, ay=400, bx=380, by=120, angle=0.0)})
    frame = obs["visual"]
    assert frame.shape == (512, 512, 3) and frame.dtype == np.uint8
    assert tuple(frame[400, 100]) == (78, 126, 255)  # agent's inner disc, light RoyalBlue
    assert tuple(frame[400, 100 + 13]) == (65, 105, 225)  # agent's rim
    # block fill: LightSlateGray x 1.2 rounded, as upstream (truncating gives (142, 163, 183))
    assert tuple(frame[135, 380]) == (143, 163, 184)
    assert tuple(frame[121, 380]) == (119, 136, 153)  # block edge
    assert tuple(frame[267, 245]) == (144, 238, 144)  # goal's crossbar, LightGreen
    assert tuple(frame[250, 5]) == (211, 211, 211)  # left wall
    assert tuple(frame[60, 60]) == (255, 255, 255)

    canvas = pusht_render.draw_canvas(big.scene())[..., :3]
    small = make("pusht", render_size=96)
    small_obs, _ = small.reset(options={"init_state": pose(ax=100, ay=400, bx=380, by=120, angle=0.0)})
    np.testing.assert_array_equal(small_obs["visual"], cv2.resize(np.ascontiguousarray(canvas), (96, 96), interpolation=cv2.INTER_AREA))
    default = make("pusht")
    default_obs, _ = default.reset(options={"init_state": pose(ax=100, ay=400, bx=380, by=120, angle=0.0)})
    np.testing.assert_array_equal(default_obs["visual"], cv2.resize(np.ascontiguousarray(canvas), (224, 224), interpolation=cv2.INTER_LINEAR))


def test_contacts_are_drawn_after_a_push():
    big = make("pusht", render_size=512)
    big.reset(options={"init_state": pose(ax=200.0, ay=340.0, bx=250.0, by=250.0, angle=0.0)})
    for _ in range(6):
        obs, *_ = big.step(np.array([0.2, 0.0]))
    marks = big.scene().contacts
    assert marks, "agent and block are in contact"
    x, y = np.round(np.mean(marks[0], axis=0)).astype(int)
    patch = obs["visual"][y - 2 : y + 3, x - 2 : x + 3].reshape(-1, 3).astype(int)
    assert (np.abs(patch - pusht_render.CONTACT_COLOR).sum(axis=1) < 60).any()


# ---- batched env ------------------------------------------------------------------------------


def single_rollouts(states, actions, render_size=64):
    env_ = make("pusht", render_size=render_size)
    results = [env_.rollout(0, s, a) for s, a in zip(states, actions)]
    return np.stack([r[0]["visual"] for r in results]), np.stack([r[1] for r in results])


def test_batch_env_in_process_matches_single_env_and_touches_only_indices():
    rng = np.random.default_rng(3)
    states, actions = random_states(rng, 3), rng.normal(0, 0.3, (3, 5, 2))
    visual, expected = single_rollouts(states, actions)
    with make_batch("pusht", 3, render_size=64, workers=0) as batch:
        obs, reached = batch.rollout(states, actions)
        np.testing.assert_array_equal(reached, expected)
        np.testing.assert_array_equal(obs["visual"], visual)
        batch.reset_to(states)
        for t in range(5):
            obs, now = batch.step(actions[:, t])
        np.testing.assert_array_equal(now, expected[:, -1])
        # stepping env 1 only leaves envs 0 and 2 where they were
        obs, moved = batch.step(np.array([[0.1, 0.1]]), indices=[1])
        assert moved.shape == (1, 7) and obs["visual"].shape == (1, 64, 64, 3)
        _, after = batch.step(np.zeros((2, 2)), indices=[2, 0])
        env_ = make("pusht", render_size=64, reset_mode="exact")  # continues from the state as it is
        env_.prepare(0, expected[0, -1])
        np.testing.assert_array_equal(after[1], env_.step(np.zeros(2))[4]["state"])
        empty_obs, empty = batch.step(np.zeros((0, 2)), indices=[])
        assert empty.shape == (0, 7) and empty_obs["visual"].shape == (0, 64, 64, 3)
        init, goal = batch.sample_random_init_goal_states([5, 6])
        np.testing.assert_array_equal(init[1], pusht.sample_init_goal_states(6)[0])
        with pytest.raises(ConfigError, match="indices"):
            batch.step(np.zeros((1, 2)), indices=[3])
        with pytest.raises(ConfigError, match="shape"):
            batch.update_env([{"shape": "nonexistent"}], indices=[0])


def test_batch_env_worker_processes_match_single_env():
    rng = np.random.default_rng(4)
    states, actions = random_states(rng, 3), rng.normal(0, 0.3, (3, 6, 2))
    visual, expected = single_rollouts(states, actions)
    with make_batch("pusht", 3, render_size=64, workers=2) as batch:
        obs, reached = batch.rollout(states, actions)
        np.testing.assert_array_equal(reached, expected)
        np.testing.assert_array_equal(obs["visual"], visual)
        # persistent state across calls, spread over both workers, in a shuffled index order
        batch.reset_to(states[[2, 0, 1]], indices=[2, 0, 1])
        for t in range(6):
            _, now = batch.step(actions[[1, 2, 0], t], indices=[1, 2, 0])
        np.testing.assert_array_equal(now, expected[[1, 2, 0], -1])


# ---- failure breakdown --------------------------------------------------------------------------


def test_failure_breakdown_names_the_failing_part_of_the_success_test():
    goal = np.array([200.0, 200.0, 256.0, 256.0, 1.0, 0.0, 0.0])
    init = np.tile(goal, (5, 1))
    init[[0, 1, 2], 2] -= 40.0  # three goals need the block pushed, two do not
    final = np.tile(goal, (5, 1))
    final[0, 2] += 25.0  # block off by 25 px: position fails, led by the block
    final[1, 0] += 30.0  # agent off by 30 px: position fails, led by the agent
    final[2, 4] += 0.5  # angle off by 0.5 rad > pi/9
    final[3, [2, 4]] += [12.0, 0.2]  # within both thresholds: solved
    final[4, [0, 4]] += [25.0, -0.6]  # both fail
    breakdown = pusht.failure_breakdown(init, np.tile(goal, (5, 1)), final)
    assert breakdown["failed"] == 4
    assert (breakdown["position_only"], breakdown["angle_only"], breakdown["position_and_angle"]) == (2, 1, 1)
    assert (breakdown["position_block_dominant"], breakdown["position_agent_dominant"]) == (1, 2)
    assert breakdown["needs_push"] == 3 and breakdown["success_rate_needs_push"] == 0.0
    assert breakdown["success_rate_no_push"] == 0.5
    assert breakdown["angle_error_rad"][2] == pytest.approx(0.5)
