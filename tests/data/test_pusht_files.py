"""The PushT dataset's file readers on their own: tensor files are never unpickled beyond plain
tensors, and the lossless MP4 writer and the reader round-trip frames of any aspect ratio."""

from __future__ import annotations

import pickle
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from wmquant.data import pusht as pusht_data
from wmquant.errors import DatasetError


class TouchOnLoad:
    """Unpickling this runs code: it creates a file."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_a_tensor_file_holding_code_is_refused_before_the_code_runs(tmp_path):
    path = tmp_path / "states.pth"
    torch.save(TouchOnLoad(tmp_path / "ran"), path)
    with pytest.raises(DatasetError, match=r"cannot read tensor file .*states\.pth: UnpicklingError"):
        pusht_data._load_tensor(path)
    assert not (tmp_path / "ran").exists()


@pytest.mark.skipif("libx264rgb" not in av.codecs_available, reason="PyAV without libx264rgb")
def test_lossless_video_round_trip_of_non_square_frames(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (3, 16, 24, 3), dtype=np.uint8)
    path = tmp_path / "episode_000.mp4"
    pusht_data.write_video(path, frames)
    np.testing.assert_array_equal(pusht_data.read_video(path), frames)
    np.testing.assert_array_equal(pusht_data.read_frames(path), frames)


def write_split(root: Path, lengths, max_length: int = 4, shapes=None) -> Path:
    """A train split in the official layout with `.pth` frames; frame t of episode i is filled with
    10 * i + t, so every frame says where it came from."""
    split = root / "train"
    (split / "obses").mkdir(parents=True)
    count = len(lengths)
    rng = np.random.default_rng(1)
    torch.save(torch.from_numpy(rng.uniform(50, 450, (count, max_length, 5)).astype(np.float32)), split / "states.pth")
    torch.save(torch.from_numpy(rng.normal(0, 50, (count, max_length, 2)).astype(np.float32)), split / "velocities.pth")
    torch.save(torch.from_numpy(rng.normal(0, 20, (count, max_length, 2)).astype(np.float32)), split / "rel_actions.pth")
    (split / "seq_lengths.pkl").write_bytes(pickle.dumps(list(lengths)))
    if shapes is not None:
        (split / "shapes.pkl").write_bytes(pickle.dumps(shapes))
    for index in range(count):
        frames = torch.arange(max_length, dtype=torch.uint8)[:, None, None, None] + 10 * index
        torch.save(frames.expand(max_length, 3, 8, 8).contiguous(), split / "obses" / pusht_data.episode_frames_name(index, "pth"))
    return root


def test_an_episode_of_one_step_is_accepted(tmp_path):
    dataset = pusht_data.PushTDataset(write_split(tmp_path, [1, 4, 2]))
    assert [dataset.seq_length(i) for i in range(3)] == [1, 4, 2]
    assert dataset.frames(0).shape == (1, 3, 8, 8)


def test_shape_names_must_all_be_strings(tmp_path):
    with pytest.raises(DatasetError, match=r"shapes\.pkl must hold 3 shape names"):
        pusht_data.PushTDataset(write_split(tmp_path, [4, 4, 4], shapes=["T", 5, "T"]))


def test_trajectories_are_the_stored_arrays_cut_to_their_length(tmp_path):
    root = write_split(tmp_path, [4, 2, 3])
    dataset = pusht_data.PushTDataset(root)
    states = torch.load(root / "train" / "states.pth")
    velocities = torch.load(root / "train" / "velocities.pth")
    rel_actions = torch.load(root / "train" / "rel_actions.pth")
    for index, length in ((1, 2), (-1, 3)):
        trajectory = dataset.trajectory(index)
        row = index % 3
        torch.testing.assert_close(trajectory.states, torch.cat([states[row, :length], velocities[row, :length]], dim=-1))
        torch.testing.assert_close(trajectory.actions, pusht_data.pixels_to_env_actions(rel_actions[row, :length]))
        assert trajectory.env_info == {"shape": "T"}


@pytest.mark.parametrize("index", [3, -4])
def test_episodes_out_of_range_are_named(tmp_path, index):
    dataset = pusht_data.PushTDataset(write_split(tmp_path, [4, 4, 4]))
    for read in (dataset.frames, dataset.trajectory, dataset.episode):
        with pytest.raises(IndexError, match=rf"episode {index} out of range for 3 episodes"):
            read(index)


def test_the_frame_cache_keeps_the_most_recently_used_episodes(tmp_path):
    dataset = pusht_data.PushTDataset(write_split(tmp_path, [4, 4, 4]), frame_cache=2)
    first, second = dataset.frames(0), dataset.frames(1)
    assert int(first[2, 0, 0, 0]) == 2 and int(second[2, 0, 0, 0]) == 12
    assert dataset.frames(0) is first  # a hit, which makes episode 0 the most recently used
    assert dataset.frames(-3) is first  # the same episode by its negative index
    dataset.frames(2)  # the third episode evicts the least recently used: episode 1
    assert dataset.frames(0) is first
    assert dataset.frames(1) is not second
    single = pusht_data.PushTDataset(write_split(tmp_path / "one", [4, 4, 4]), frame_cache=1)
    assert single.frames(2) is single.frames(-1)
    uncached = pusht_data.PushTDataset(write_split(tmp_path / "none", [4, 4, 4]))
    assert uncached.frames(0) is not uncached.frames(0)
    torch.testing.assert_close(uncached.frames(0), first)


def test_random_initial_states_cover_the_spec_ranges_exactly():
    rng = np.random.default_rng(3)
    states = np.stack([pusht_data._random_initial_state(rng) for _ in range(20000)])
    assert states.shape == (20000, 7)
    assert states[:, :2].min() == 50 and states[:, :2].max() == 449  # integers in [50, 450)
    assert states[:, 2:4].min() == 100 and states[:, 2:4].max() == 399  # integers in [100, 400)
    assert 0.0 <= states[:, 4].min() < 0.01 and 2 * np.pi - 0.01 < states[:, 4].max() < 2 * np.pi
    assert not states[:, 5:].any()
    np.testing.assert_array_equal(states, states.astype(np.float32))  # stored as float32 without change


def _record(length, block_moves, reached_goal=None, actions=None):
    """An episode record: the block steps 1 px in the transitions listed in `block_moves`."""
    states = np.zeros((length, 5), np.float32)
    for t in range(1, length):
        states[t, 2] = states[t - 1, 2] + (1.0 if t - 1 in block_moves else 0.0)
    record = {
        "states": states,
        "velocities": np.zeros((length, 2), np.float32),
        "rel_actions": np.zeros((length, 2), np.float32) if actions is None else np.asarray(actions, np.float32),
    }
    if reached_goal is not None:
        record["reached_goal"] = np.bool_(reached_goal)
    return record


def test_recorded_statistics_of_hand_made_episodes():
    records = [
        _record(3, {0}, True, actions=[[1.0, 2.0], [3.0, 6.0], [100.0, 100.0]]),  # the last action is never taken
        _record(5, {0, 1, 2, 3}, False, actions=[[1.0, 2.0]] * 4 + [[-100.0, -100.0]]),
        _record(4, set(), actions=[[3.0, 6.0]] * 3 + [[50.0, 50.0]]),  # a pusher episode: no reached_goal
        _record(2, {0}, False, actions=[[1.0, 2.0], [7.0, 7.0]]),
    ]
    stats = pusht_data.recorded_statistics(records, records[3:])
    assert stats["episode_length"] == {"min": 2, "mean": 3.5, "max": 5}
    assert stats["reached_goal_fraction"] == pytest.approx(0.25, abs=1e-12)
    # moving fractions 1/2, 4/4, 0/3, 1/1 weighted by transitions 2, 4, 3, 1
    assert stats["block_moving_fraction"] == pytest.approx(6 / 10, abs=1e-12)
    # actions taken: (1, 2) x 6 and (3, 6) x 4
    np.testing.assert_allclose(stats["action_mean_px"], [1.8, 3.6], rtol=0, atol=1e-6)
    np.testing.assert_allclose(stats["action_std_px"], [np.sqrt(0.96), np.sqrt(3.84)], rtol=0, atol=1e-6)
    assert stats["val_segments"] is None  # too short for a 25-step segment
    assert len(stats["official_comparison"]) > 0 and stats["matches_official"] is False
