"""The Wall generator's random walk (wmquant.data.wall), drawn in bulk without rendering: starts
uniform over the free space, a uniform first heading, von Mises turns, truncated-normal step
lengths; and the side-of-the-wall rule behind the door-crossing statistic."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from wmquant.data import generate_dataset
from wmquant.data import wall as wall_data
from wmquant.envs.wall import BORDER_HIGH, BORDER_LOW, DOOR_HALF_HEIGHT, WALL_HALF_WIDTH, WallBatchEnv, WallLayout

EPISODES = 2000
LOW, HIGH = BORDER_LOW + wall_data.START_MARGIN, BORDER_HIGH - wall_data.START_MARGIN


def plans(random_layouts: bool = False, steps: int = 50, seed: int = 0):
    settings = wall_data._WalkSettings(seed, steps, WallLayout(32, 30), random_layouts)
    return [wall_data._episode_plan(settings, i) for i in range(EPISODES)]


@pytest.mark.parametrize("random_layouts", [False, True])
def test_starts_fill_the_free_space_and_never_the_solid_wall(random_layouts):
    drawn = plans(random_layouts)
    starts = np.stack([start.astype(np.float64) for _, start, _ in drawn])
    wall_x = np.array([layout.wall_x for layout, _, _ in drawn])
    door_y = np.array([layout.door_y for layout, _, _ in drawn])
    assert starts.min() >= LOW and starts.max() <= HIGH
    # the margin is kept and no more: some starts lie within 0.2 px of each limit
    assert (starts.min(axis=0) < LOW + 0.2).all() and (starts.max(axis=0) > HIGH - 0.2).all()
    in_band = np.abs(starts[:, 0] - wall_x) <= WALL_HALF_WIDTH + wall_data.START_MARGIN
    assert (np.abs(starts[in_band, 1] - door_y[in_band]) <= DOOR_HALF_HEIGHT).all()  # in the band: in the door
    assert in_band.any()
    # starts moved out of the wall go to either side with equal chance: half the starts are left of it
    assert abs((starts[:, 0] < wall_x).mean() - 0.5) < 0.03
    if random_layouts:
        assert {layout.wall_x for layout, _, _ in drawn} == set(range(*wall_data.RANDOM_WALL_X))
        assert {layout.door_y for layout, _, _ in drawn} == set(range(*wall_data.RANDOM_DOOR_Y))


def test_headings_start_uniform_and_turn_by_von_mises_steps():
    headings = np.stack([np.arctan2(a[:, 1], a[:, 0]).astype(np.float64) for _, _, a in plans()])
    first = np.mod(headings[:, 0], 2 * math.pi)
    quarters = np.histogram(first, bins=4, range=(0, 2 * math.pi))[0] / EPISODES
    assert np.abs(quarters - 0.25).max() < 0.04, quarters
    turns = np.diff(headings, axis=1)
    kappa_mean_cos = 0.8934  # E[cos] of von Mises(0, 5) = I1(5) / I0(5)
    assert abs(np.cos(turns[:, 0]).mean() - kappa_mean_cos) < 0.02  # the first turn too
    assert abs(np.cos(turns).mean() - kappa_mean_cos) < 0.01
    assert abs(np.sin(turns).mean()) < 0.01  # no drift to either side


def test_step_lengths_follow_the_truncated_normal():
    lengths = np.concatenate([np.linalg.norm(a.astype(np.float64), axis=1) for _, _, a in plans()])
    low, high = (wall_data.STEP_LOW - wall_data.STEP_MEAN) / wall_data.STEP_STD, \
        (wall_data.STEP_HIGH - wall_data.STEP_MEAN) / wall_data.STEP_STD
    law = stats.truncnorm(low, high, loc=wall_data.STEP_MEAN, scale=wall_data.STEP_STD)
    # 100000 lengths: a KS distance above 0.008 has p < 1e-5 under the law
    assert stats.kstest(lengths, law.cdf).statistic < 0.008
    assert (lengths == wall_data.STEP_HIGH).mean() < 1e-3  # no mass piled at a clip


def test_an_episode_depends_on_its_seed_and_index_only():
    settings = wall_data._WalkSettings(3, 7, WallLayout(32, 30), True)
    again = wall_data._WalkSettings(3, 7, WallLayout(32, 30), True)
    for index in (0, 5):
        a, b = wall_data._episode_plan(settings, index), wall_data._episode_plan(again, index)
        assert a[0] == b[0] and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
        assert a[1].dtype == np.float32 and a[2].dtype == np.float32 and a[2].shape == (7, 2)
    assert not np.array_equal(wall_data._episode_plan(settings, 0)[2], wall_data._episode_plan(settings, 1)[2])


def test_sides_of_the_wall():
    x = 32 + np.array([[-WALL_HALF_WIDTH - 0.01, -WALL_HALF_WIDTH, 0.0, WALL_HALF_WIDTH, WALL_HALF_WIDTH + 0.01]])
    assert wall_data._sides(x, np.array([32])).tolist() == [[-1, 0, 0, 0, 1]]
    # each episode against its own wall
    rows = np.array([[20.0, 40.0], [20.0, 40.0]])
    assert wall_data._sides(rows, np.array([30, 45])).tolist() == [[-1, 1], [-1, -1]]


def test_door_crossing_fraction_counts_episodes_seen_on_both_sides(tmp_path):
    root = tmp_path / "walk"
    stats_ = generate_dataset("wall", root, episodes=24, seed=4, steps=60, workers=1, progress=False)
    states = torch.load(root / "states.pth", weights_only=True).double().numpy()
    actions = torch.load(root / "actions.pth", weights_only=True).double().numpy()
    env = WallBatchEnv(len(states))
    _, replayed = env.rollout(states[:, 0], actions)  # every state, the last one too
    x = replayed[..., 0]
    crossed = ((x < 32 - WALL_HALF_WIDTH).any(axis=1) & (x > 32 + WALL_HALF_WIDTH).any(axis=1)).mean()
    assert 0 < crossed < 1  # a sample that tells crossing from not crossing
    assert stats_["door_crossing_fraction"] == pytest.approx(crossed)
