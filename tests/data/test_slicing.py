"""Frameskip windows (spec 3.8) and the batched gather."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wmquant.data.base import Episode, Normalization, TrajectoryDataset
from wmquant.data.slicing import (
    TrajectoryWindows,
    group_actions,
    shuffle_windows,
    window_index,
    window_starts,
)
from wmquant.errors import ConfigError, DatasetError


def make_episode(length: int, offset: float, frame_size: int = 4) -> Episode:
    """Values encode (episode offset, time) so that every gathered element can be checked."""
    t = torch.arange(length, dtype=torch.float32)
    visual = (offset + t).to(torch.uint8)[:, None, None, None].repeat(1, 3, frame_size, frame_size)
    return Episode(
        visual=visual,
        proprio=torch.stack([offset + t, -t], dim=1),
        actions=torch.stack([100 + offset + t, 200 + t], dim=1),
        states=torch.stack([offset + t, t, 2 * t], dim=1),
        env_info={"id": offset},
    )


def literal_window(episode: Episode, start: int, num_frames: int, frameskip: int):
    """Upstream's TrajSlicerDataset.__getitem__ transcribed: frames start::f, actions start:end."""
    end = start + num_frames * frameskip
    return (
        episode.visual[start:end:frameskip],
        episode.proprio[start:end:frameskip],
        episode.actions[start:end].reshape(num_frames, -1),
        episode.states[start:end:frameskip],
    )


def test_window_starts_hand_computed():
    assert list(window_starts(10, 2, 3)) == [0, 1, 2, 3, 4]  # last window: frames 4, 7; actions 4..9
    assert list(window_starts(6, 2, 3)) == [0]
    assert list(window_starts(5, 2, 3)) == []
    assert list(window_starts(50, 4, 5)) == list(range(31))


def test_group_actions_keeps_time_order_and_components_together():
    actions = torch.tensor([[0.0, 10], [1, 11], [2, 12], [3, 13], [4, 14], [5, 15]])
    grouped = group_actions(actions, num_frames=2, frameskip=3)
    assert grouped.tolist() == [[0, 10, 1, 11, 2, 12], [3, 13, 4, 14, 5, 15]]
    with pytest.raises(ConfigError):
        group_actions(actions, num_frames=2, frameskip=2)


def test_shuffle_matches_upstream_global_permutation():
    index = window_index([12, 9, 15], 2, 3)
    np.random.seed(0)
    expected = np.random.permutation(index)
    assert np.array_equal(shuffle_windows(index, 0), expected)


def test_gather_matches_literal_slicing_for_every_window():
    episodes = [make_episode(12, 0), make_episode(9, 20), make_episode(5, 40)]  # the last is too short
    windows = TrajectoryWindows(episodes, num_frames=2, frameskip=3, shuffle_seed=None)
    assert len(windows) == (12 - 6 + 1) + (9 - 6 + 1)
    assert set(windows.index[:, 0].tolist()) == {0, 1}
    batch = windows.gather(np.arange(len(windows)))
    assert batch["visual"].shape == (len(windows), 2, 3, 4, 4) and batch["visual"].dtype == torch.uint8
    assert batch["actions"].shape == (len(windows), 2, 6)
    for row, (episode, start) in enumerate(windows.index):
        visual, proprio, actions, states = literal_window(episodes[episode], int(start), 2, 3)
        assert torch.equal(batch["visual"][row], visual)
        assert torch.equal(batch["proprio"][row], proprio)
        assert torch.equal(batch["actions"][row], actions)
        assert torch.equal(batch["states"][row], states)
    item = windows[3]
    assert torch.equal(item["actions"], batch["actions"][3])


def test_normalisation_applies_to_proprio_and_actions_not_states():
    episodes = [make_episode(8, 0), make_episode(8, 10)]
    norm = Normalization(
        action_mean=torch.tensor([1.0, 2.0]), action_std=torch.tensor([2.0, 4.0]),
        proprio_mean=torch.tensor([3.0, 0.0]), proprio_std=torch.tensor([0.5, 1.0]),
        state_mean=torch.zeros(3), state_std=torch.ones(3) * 7,
    )
    windows = TrajectoryWindows(episodes, num_frames=3, frameskip=2, normalization=norm, shuffle_seed=5)
    batch = windows.gather([0, 1, 2])
    for row in range(3):
        episode, start = windows.index[row]
        _, proprio, actions, states = literal_window(episodes[episode], int(start), 3, 2)
        torch.testing.assert_close(batch["proprio"][row], (proprio - norm.proprio_mean) / norm.proprio_std)
        expected_actions = ((actions.reshape(6, 2) - norm.action_mean) / norm.action_std).reshape(3, 4)
        torch.testing.assert_close(batch["actions"][row], expected_actions)
        assert torch.equal(batch["states"][row], states)


def test_batches_cover_the_table_once():
    windows = TrajectoryWindows([make_episode(20, 0), make_episode(15, 30)], 2, 2, shuffle_seed=1)
    seen = torch.cat([b["episode"] * 1000 + b["start"] for b in windows.batches(7)])
    expected = torch.from_numpy(windows.index[:, 0] * 1000 + windows.index[:, 1])
    assert torch.equal(seen, expected)
    assert sum(len(b["start"]) for b in windows.batches(7, drop_last=True)) == len(windows) // 7 * 7


def test_errors():
    with pytest.raises(DatasetError, match="long enough"):
        TrajectoryWindows([make_episode(4, 0)], num_frames=2, frameskip=3)
    with pytest.raises(ConfigError):
        TrajectoryWindows([make_episode(10, 0)], num_frames=0, frameskip=1)
    mismatched = [make_episode(10, 0, frame_size=4), make_episode(10, 0, frame_size=5)]
    with pytest.raises(DatasetError, match="episode 1"):
        TrajectoryWindows(mismatched, num_frames=2, frameskip=1)
    windows = TrajectoryWindows([make_episode(10, 0)], 2, 1)  # 9 windows
    for bad in ([100], [9], [-1], [0, 9], [-1, 5]):
        with pytest.raises(ConfigError, match=r"window indices must lie in 0\.\.8"):
            windows.gather(bad)
    assert windows.gather([0, 8])["start"].tolist() == windows.index[[0, 8], 1].tolist()  # both ends are valid
    with pytest.raises(ConfigError, match="batch_size must be a positive integer, got 0"):
        next(windows.batches(0))


class _ListDataset(TrajectoryDataset):
    env_name = "toy"

    def __init__(self, episodes, normalization):
        self._episodes = episodes
        self.normalization = normalization

    def __len__(self):
        return len(self._episodes)

    def episode(self, index):
        return self._episodes[index]


def test_a_datasets_own_normalisation_and_lengths_are_used_and_none_keeps_the_order():
    episodes = [make_episode(7, 0), make_episode(9, 20), make_episode(3, 40)]
    norm = Normalization(
        action_mean=torch.tensor([5.0, -1.0]), action_std=torch.tensor([2.0, 3.0]),
        proprio_mean=torch.tensor([1.0, 2.0]), proprio_std=torch.tensor([4.0, 0.5]),
        state_mean=torch.zeros(3), state_std=torch.ones(3),
    )
    windows = TrajectoryWindows(_ListDataset(episodes, norm), num_frames=2, frameskip=2, shuffle_seed=None)
    assert windows.normalization is norm and windows.seq_lengths.tolist() == [7, 9, 3]
    np.testing.assert_array_equal(windows.index, window_index([7, 9, 3], 2, 2))  # (episode, start) order
    batch = windows.gather(np.arange(len(windows)))
    for row, (episode, start) in enumerate(windows.index):
        _, proprio, _, _ = literal_window(episodes[episode], int(start), 2, 2)
        torch.testing.assert_close(batch["proprio"][row], (proprio - norm.proprio_mean) / norm.proprio_std)
    shuffled = TrajectoryWindows(_ListDataset(episodes, norm), num_frames=2, frameskip=2, shuffle_seed=0)
    np.testing.assert_array_equal(shuffled.index, shuffle_windows(window_index([7, 9, 3], 2, 2), 0))
    assert not np.array_equal(shuffled.index, windows.index)


def test_visual_fn_is_applied_to_each_episodes_frames():
    episodes = [make_episode(6, 0, frame_size=4), make_episode(6, 10, frame_size=4)]
    halve = lambda frames: frames[..., ::2, ::2] + 1  # noqa: E731
    windows = TrajectoryWindows(episodes, num_frames=2, frameskip=1, shuffle_seed=None, visual_fn=halve)
    batch = windows.gather(np.arange(len(windows)))
    assert batch["visual"].shape[-2:] == (2, 2)
    for row, (episode, start) in enumerate(windows.index):
        visual, _, _, _ = literal_window(episodes[episode], int(start), 2, 1)
        assert torch.equal(batch["visual"][row], halve(visual))
