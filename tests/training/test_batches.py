"""Training batches: frames stay in host memory, and every window reads the dataset's own frames."""

from __future__ import annotations

import pytest
import torch

from wmquant.data import load_dataset
from wmquant.data.base import Episode, TrajectoryDataset
from wmquant.data.transforms import to_model_input
from wmquant.errors import DatasetError
from wmquant.training.batches import EpisodeTensors, WindowSampler


@pytest.fixture(scope="module")
def wall_train(wall_data):
    return load_dataset("wall", wall_data, split="train")


def test_frames_stay_on_the_host_while_the_rest_moves_to_the_training_device(wall_train):
    # The meta device stands in for a GPU: it holds shapes only, so a frame moved there is lost.
    episodes = EpisodeTensors.from_dataset(wall_train, "meta")
    assert episodes.visual.device.type == "cpu"
    assert episodes.device.type == "meta"
    assert {t.device.type for t in (episodes.proprio, episodes.actions, episodes.states, episodes.lengths)} == {"meta"}
    picked = episodes.frames(torch.tensor([0, 1]), torch.tensor([2, 0]))
    assert picked.device.type == "meta" and picked.dtype == torch.uint8
    assert picked.shape == (2, *episodes.visual.shape[2:])


def test_frames_are_the_datasets_own(wall_train):
    episodes = EpisodeTensors.from_dataset(wall_train)
    episode, time = torch.tensor([[0, 3], [2, 1]]), torch.tensor([[5, 0], [1, 7]])
    picked = episodes.frames(episode, time)
    assert picked.shape[:2] == (2, 2)
    for i in range(2):
        for j in range(2):
            source = wall_train.episode(int(episode[i, j])).visual[int(time[i, j])]
            assert torch.equal(picked[i, j], source.round().clamp(0, 255).to(torch.uint8))


def test_a_window_holds_the_frames_frameskip_apart_from_its_start(wall_train):
    episodes = EpisodeTensors.from_dataset(wall_train)
    sampler = WindowSampler(episodes, num_frames=2, frameskip=5, seed=1)
    episode, start = sampler.sample_indices(4)
    batch = sampler.gather(episode, start, img_size=32)
    for row in range(4):
        source = wall_train.episode(int(episode[row]))
        for k in range(2):
            expected = to_model_input(source.visual[int(start[row]) + 5 * k].round().clamp(0, 255).to(torch.uint8), 32)
            assert torch.equal(batch["visual"][row, k], expected)


class _Shortened(TrajectoryDataset):
    """The first episodes of a split, each cut to its own length."""

    def __init__(self, source: TrajectoryDataset, lengths: list[int], visual=None) -> None:
        self.source, self.lengths, self.visual = source, lengths, visual
        self.env_name, self.normalization = source.env_name, source.normalization

    def __len__(self) -> int:
        return len(self.lengths)

    def episode(self, index: int) -> Episode:
        full, length = self.source.episode(index), self.lengths[index]
        visual = full.visual[:length] if self.visual is None else self.visual[:length]
        return Episode(visual, full.proprio[:length], full.actions[:length], full.states[:length])


def test_episodes_of_different_lengths_are_padded_to_the_longest_with_their_last_step(wall_train):
    dataset = _Shortened(wall_train, [12, 20, 7])
    episodes = EpisodeTensors.from_dataset(dataset)
    assert episodes.lengths.tolist() == [12, 20, 7]
    assert episodes.visual.shape[:2] == episodes.states.shape[:2] == episodes.actions.shape[:2] == (3, 20)
    norm = wall_train.normalization
    for index, length in enumerate([12, 20, 7]):
        source = dataset.episode(index)
        assert torch.equal(episodes.states[index, :length], source.states)
        torch.testing.assert_close(episodes.actions[index, :length], norm.normalize_actions(source.actions))
        for tensor, last in ((episodes.states, source.states[-1]), (episodes.proprio, norm.normalize_proprio(source.proprio)[-1])):
            torch.testing.assert_close(tensor[index, length:], last.expand(20 - length, -1))
        assert torch.equal(episodes.visual[index, length:], source.visual[-1:].round().clamp(0, 255).to(torch.uint8)
                           .expand(20 - length, -1, -1, -1))
    # windows never start where they would run into the padding
    sampler = WindowSampler(episodes, num_frames=2, frameskip=5, seed=0)
    assert sampler.window_counts.tolist() == [3, 11, 0] and sampler.total == 14
    # episodes no longer than a state has dimensions (2 for Wall) are padded all the same
    short = EpisodeTensors.from_dataset(_Shortened(wall_train, [2, 1]))
    assert short.states.shape[:2] == short.proprio.shape[:2] == short.visual.shape[:2] == (2, 2)
    assert torch.equal(short.states[1, 1], short.states[1, 0])


def test_float_frames_are_rounded_and_clipped_to_bytes(wall_train):
    # float32 frames in [0, 255] (the official datasets' layout) may carry resampling overshoot
    values = torch.tensor([-0.4, 0.6, 12.4, 12.6, 254.5, 255.7])
    visual = values.repeat_interleave(4).view(1, 3, 2, 4).expand(12, -1, -1, -1).clone()
    episodes = EpisodeTensors.from_dataset(_Shortened(wall_train, [12], visual=visual))
    assert episodes.visual.dtype == torch.uint8
    assert episodes.visual[0, 0].flatten()[::4].tolist() == [0, 1, 12, 13, 254, 255]  # 254.5: to even


def test_one_window_is_enough_and_none_is_refused(wall_train):
    span = 2 * 5
    assert WindowSampler(EpisodeTensors.from_dataset(_Shortened(wall_train, [span])), 2, 5).total == 1
    with pytest.raises(DatasetError, match="no episode is long enough for 2 frames 5 steps apart \\(10 steps\\); "
                                           "longest episode: 9 steps"):
        WindowSampler(EpisodeTensors.from_dataset(_Shortened(wall_train, [span - 1])), 2, 5)


def test_a_windows_actions_are_the_frameskip_actions_after_each_of_its_frames(wall_train):
    dataset = _Shortened(wall_train, [12, 20, 7])
    episodes = EpisodeTensors.from_dataset(dataset)
    sampler = WindowSampler(episodes, num_frames=2, frameskip=5, seed=3)
    drawn = set(zip(*(t.tolist() for t in sampler.sample_indices(400))))
    # every window can be drawn, the first of each episode too, and none that runs into the padding
    assert drawn == {(0, s) for s in range(3)} | {(1, s) for s in range(11)}
    episode, start = torch.tensor([1, 0]), torch.tensor([4, 2])
    batch = sampler.gather(episode, start, img_size=32, visual=False)
    assert "visual" not in batch and batch["actions"].shape == (2, 2, 5 * 2)
    norm = wall_train.normalization
    for row in range(2):
        source, s = dataset.episode(int(episode[row])), int(start[row])
        for k in range(2):
            t = s + 5 * k
            torch.testing.assert_close(batch["actions"][row, k], norm.normalize_actions(source.actions[t : t + 5]).flatten())
            torch.testing.assert_close(batch["proprio"][row, k], norm.normalize_proprio(source.proprio[t]))
            assert torch.equal(batch["states"][row, k], source.states[t])
