"""Evaluation episodes (spec 5.2-5.3): seeds, calibration replicates, dataset segments and goals,
on an in-memory Wall dataset whose trajectories are walks the env can replay."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wmquant.data.base import Normalization, Trajectory, TrajectoryDataset
from wmquant.envs import make_batch
from wmquant.envs.wall import ACTION_SCALE
from wmquant.errors import ConfigError, DatasetError
from wmquant.planning.episodes import (_draw_segment, _episode_rng, calibration_seeds, evaluation_seeds,
                                       make_episodes)

LAYOUT = {"fix_wall_location": 40, "fix_door_location": 22}  # not the default layout (32, 30)


class Walks(TrajectoryDataset):
    """Frameless Wall walks left of the wall, one per length: states follow the env's free motion."""

    env_name = "wall"

    def __init__(self, lengths):
        self.normalization = Normalization(
            action_mean=torch.zeros(2), action_std=torch.ones(2), proprio_mean=torch.zeros(2),
            proprio_std=torch.ones(2), state_mean=torch.zeros(2), state_std=torch.ones(2))
        gen = np.random.default_rng(0)
        self._walks = []
        for length in lengths:
            actions = gen.uniform(-0.5, 0.5, (length, 2))
            states = np.cumsum(np.vstack([[10.0, 20.0], actions[:-1] * ACTION_SCALE]), axis=0)  # the env's step
            self._walks.append(Trajectory(torch.from_numpy(states), torch.from_numpy(actions), dict(LAYOUT)))

    def __len__(self):
        return len(self._walks)

    def trajectory(self, index):
        return self._walks[index]

    def seq_length(self, index):
        return len(self._walks[index].states)

    def episode(self, index):
        raise DatasetError("frameless")


def test_calibration_replicates_continue_the_sequence_disjoint_from_each_other_and_evaluation():
    evaluation = set(evaluation_seeds(99, 4))
    replicates = [calibration_seeds(99, 4, r) for r in range(3)]
    assert replicates[0] == [2, 101, 200, 299]
    assert replicates[1] == [99 * n + 2 for n in range(4, 8)] and replicates[2] == [99 * n + 2 for n in range(8, 12)]
    for r, seeds in enumerate(replicates):
        assert not evaluation & set(seeds)
        for other in replicates[r + 1:]:
            assert not set(seeds) & set(other)
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="calib_seed_offset must be an integer >= 0"):
            calibration_seeds(99, 4, bad)
    with pytest.raises(ConfigError, match="seed must be an integer >= 2"):
        calibration_seeds(1, 4)


def test_segments_fit_their_trajectory_and_every_offset_is_drawn():
    dataset = Walks([26, 28, 10])  # the 10-frame walk is too short for goal_H 5, frameskip 5
    draws = [_draw_segment(dataset, 26, _episode_rng(seed)) for seed in range(200)]
    assert {traj for traj, _ in draws} == {0, 1}
    assert {offset for traj, offset in draws if traj == 0} == {0}  # exactly as long as a segment
    assert {offset for traj, offset in draws if traj == 1} == {0, 1, 2}
    # published runs replay from these draws: pin the first ones
    assert draws[:4] == [(1, 2), (0, 0), (1, 1), (1, 2)]


def test_one_eligible_trajectory_is_enough_and_none_is_an_error():
    assert {_draw_segment(Walks([10, 26]), 26, _episode_rng(s))[0] for s in range(20)} == {1}
    with pytest.raises(DatasetError, match=r"no trajectory in the dataset has 26 frames .*the longest has 25"):
        _draw_segment(Walks([25, 12]), 26, _episode_rng(0))


def test_dset_episodes_replay_the_segment_from_its_first_state():
    dataset = Walks([30, 40, 27])
    seeds = np.array([3, 4, 5], dtype=np.int64)
    env = make_batch("wall", 3)
    episodes = make_episodes(env, "wall", seeds, "dset", goal_H=1, frameskip=5, dataset=dataset)
    assert episodes.seeds == [3, 4, 5] and all(type(s) is int for s in episodes.seeds)
    for row, seed in enumerate(seeds):
        traj, offset = _draw_segment(dataset, 6, _episode_rng(int(seed)))
        walk = dataset.trajectory(traj)
        np.testing.assert_array_equal(episodes.init_states[row], walk.states[offset].numpy())
        np.testing.assert_array_equal(episodes.gt_actions[row], walk.actions[offset:offset + 5].numpy())
        # the walk's steps stay clear of the wall, so the replay reaches the walk's own state 5 steps on
        np.testing.assert_allclose(episodes.goal_states[row], walk.states[offset + 5].numpy(), rtol=0, atol=1e-9)
    assert episodes.env_infos == [LAYOUT] * 3 and episodes.meta["goal_H"] == 1
    assert [(layout.wall_x, layout.door_y) for layout in env.layouts()] == [(40, 22)] * 3
    # the observations are the frames of the segment's first and last states (Wall resets exactly)
    for states, obs in ((episodes.init_states, episodes.obs_0), (episodes.goal_states, episodes.obs_g)):
        rendered, _ = env.reset_to(states)
        np.testing.assert_array_equal(obs["visual"], rendered["visual"])
        np.testing.assert_array_equal(obs["proprio"], rendered["proprio"])


def test_goal_h_must_be_positive_and_a_dataset_source_needs_a_dataset():
    env = make_batch("wall", 1)
    with pytest.raises(ConfigError, match="goal_H must be >= 1, got 0"):
        make_episodes(env, "wall", [3], "dset", goal_H=0, frameskip=5, dataset=Walks([30]))
    with pytest.raises(ConfigError, match="goal_source=dset needs a dataset: set dataset_path=DIR"):
        make_episodes(env, "wall", [3], "dset", goal_H=5, frameskip=5)
    with pytest.raises(ConfigError, match="unknown goal_source 'file'; valid:"):
        make_episodes(env, "wall", [3], "file", goal_H=5, frameskip=5)


def test_random_state_goals_take_the_layout_from_a_two_frame_segment():
    env = make_batch("wall", 2)
    dataset = Walks([2, 2])  # as short as the layout draw allows
    episodes = make_episodes(env, "wall", [7, 8], "random_state", goal_H=5, frameskip=5, dataset=dataset)
    assert episodes.env_infos == [LAYOUT, LAYOUT] and episodes.gt_actions is None
    assert [(layout.wall_x, layout.door_y) for layout in env.layouts()] == [(40, 22)] * 2
    # init and goal lie on opposite sides of the dataset's wall, not of the default one
    assert np.all((episodes.init_states[:, 0] < 40) != (episodes.goal_states[:, 0] < 40))


def test_random_action_goals_denormalise_standard_normal_draws_of_the_episodes_generator():
    dataset = Walks([30, 30])
    dataset.normalization = Normalization(
        action_mean=torch.tensor([0.3, -0.2]), action_std=torch.tensor([0.05, 0.1]), proprio_mean=torch.zeros(2),
        proprio_std=torch.ones(2), state_mean=torch.zeros(2), state_std=torch.ones(2))
    env = make_batch("wall", 2)
    episodes = make_episodes(env, "wall", [5, 6], "random_action", goal_H=2, frameskip=5, dataset=dataset)
    for row, seed in enumerate((5, 6)):
        rng = _episode_rng(seed)
        traj, offset = _draw_segment(dataset, 11, rng)  # the segment first, then the actions
        expected = rng.standard_normal((10, 2)) * [0.05, 0.1] + [0.3, -0.2]
        np.testing.assert_allclose(episodes.gt_actions[row], expected, rtol=1e-6, atol=0)
        np.testing.assert_array_equal(episodes.init_states[row], dataset.trajectory(traj).states[offset].numpy())
