"""Training batches: frames stay in host memory, and every window reads the dataset's own frames."""

from __future__ import annotations

import pytest
import torch

from wmquant.data import load_dataset
from wmquant.data.transforms import to_model_input
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
