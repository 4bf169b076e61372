"""wmquant.data.base: the normalisation maps by hand (planning tests compute their expected actions
with `denormalize_actions` itself, so they cannot catch it), and the base dataset's defaults."""

from __future__ import annotations

import torch

from wmquant.data.base import Episode, Normalization, TrajectoryDataset

NORM = Normalization(action_mean=torch.tensor([1.0, -2.0]), action_std=torch.tensor([2.0, 0.5]),
                     proprio_mean=torch.tensor([10.0]), proprio_std=torch.tensor([4.0]),
                     state_mean=torch.tensor([0.0, 1.0]), state_std=torch.tensor([1.0, 3.0]))


def test_actions_and_proprio_by_hand():
    raw = torch.tensor([[3.0, -1.0], [1.0, -2.5]])
    assert NORM.normalize_actions(raw).tolist() == [[1.0, 2.0], [0.0, -1.0]]  # (raw - mean) / std
    assert NORM.denormalize_actions(torch.tensor([[1.0, 2.0], [0.0, -1.0]])).tolist() == raw.tolist()
    assert NORM.normalize_proprio(torch.tensor([[18.0], [6.0]])).tolist() == [[2.0], [-1.0]]


def test_the_maps_follow_the_inputs_dtype_and_invert_each_other():
    raw = torch.randn(4, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    normalised = NORM.normalize_actions(raw)
    assert normalised.dtype == torch.float64 and normalised.shape == (4, 3, 2)
    torch.testing.assert_close(NORM.denormalize_actions(normalised), raw, rtol=0, atol=1e-12)


def test_dict_round_trip():
    as_dict = NORM.as_dict()
    assert as_dict["action_std"] == [2.0, 0.5] and set(as_dict) == {
        "action_mean", "action_std", "proprio_mean", "proprio_std", "state_mean", "state_std"}
    back = Normalization.from_dict(as_dict)
    assert all(torch.equal(getattr(back, k), getattr(NORM, k)) for k in as_dict)
    assert back.action_mean.dtype == torch.float32


class TwoEpisodes(TrajectoryDataset):
    env_name = "toy"
    normalization = NORM

    def __init__(self):
        self.episodes = [Episode(visual=torch.zeros(3 + i, 3, 4, 4, dtype=torch.uint8), proprio=torch.zeros(3 + i, 1),
                                 actions=torch.full((3 + i, 2), float(i)), states=torch.full((3 + i, 2), 10.0 + i),
                                 env_info={"layout": i}) for i in range(2)]

    def __len__(self) -> int:
        return 2

    def episode(self, index: int) -> Episode:
        return self.episodes[index]


def test_the_base_datasets_defaults_read_the_episode():
    dataset = TwoEpisodes()
    assert dataset.seq_length(0) == 3 and dataset.seq_length(1) == 4 and len(dataset[1]) == 4
    trajectory = dataset.trajectory(1)
    assert trajectory.states.tolist() == [[11.0, 11.0]] * 4 and trajectory.actions.tolist() == [[1.0, 1.0]] * 4
    assert trajectory.env_info == {"layout": 1}
    trajectory.env_info["layout"] = 5  # a copy: the stored episode's layout is not changed through it
    assert dataset.episode(1).env_info == {"layout": 1}
