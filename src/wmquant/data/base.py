"""What every trajectory dataset in wmquant provides, whatever its on-disk layout.

A dataset is a list of episodes. An episode keeps its frames as stored (uint8, or float in
[0, 255] for the official Wall archive) and its proprio, actions and states in raw env units.
Normalisation and image preprocessing are applied by the consumer (`normalized_*` helpers here,
`wmquant.data.transforms` for images), so that nothing is converted twice and frames stay small.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Normalization:
    """Per-dimension mean and std of raw actions (one env step), proprio and state."""

    action_mean: torch.Tensor
    action_std: torch.Tensor
    proprio_mean: torch.Tensor
    proprio_std: torch.Tensor
    state_mean: torch.Tensor
    state_std: torch.Tensor

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """actions (..., A) in env units -> normalised."""
        return (actions - self.action_mean.to(actions)) / self.action_std.to(actions)

    def denormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return actions * self.action_std.to(actions) + self.action_mean.to(actions)

    def normalize_proprio(self, proprio: torch.Tensor) -> torch.Tensor:
        return (proprio - self.proprio_mean.to(proprio)) / self.proprio_std.to(proprio)

    def as_dict(self) -> dict[str, list[float]]:
        return {k: getattr(self, k).tolist() for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Normalization":
        return cls(**{k: torch.as_tensor(d[k], dtype=torch.float32) for k in cls.__dataclass_fields__})


@dataclass
class Episode:
    """One trajectory. Frame t is observed before action t is taken.

    visual:  (T, 3, H, W) uint8, or float32 with values in [0, 255]
    proprio: (T, P) float32, raw units
    actions: (T, A) float32, raw env units (what `env.step` consumes)
    states:  (T, S) float32, raw units
    env_info: what `env.update_env` needs to reproduce the episode's layout
    """

    visual: torch.Tensor
    proprio: torch.Tensor
    actions: torch.Tensor
    states: torch.Tensor
    env_info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.actions.shape[0])


@dataclass
class Trajectory:
    """An episode's states (T, S) and actions (T, A) in raw env units, and its layout."""

    states: torch.Tensor
    actions: torch.Tensor
    env_info: dict[str, Any] = field(default_factory=dict)


class TrajectoryDataset(ABC, torch.utils.data.Dataset):
    """A split (or the whole) of a trajectory dataset."""

    env_name: str
    normalization: Normalization

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def episode(self, index: int) -> Episode:
        """The raw episode `index` of this split."""

    def seq_length(self, index: int) -> int:
        return len(self.episode(index))

    def trajectory(self, index: int) -> "Trajectory":
        """Episode `index` without its frames: what planning goals are drawn from. Datasets that can
        read states without decoding frames override this."""
        episode = self.episode(index)
        return Trajectory(states=episode.states, actions=episode.actions, env_info=dict(episode.env_info))

    def __getitem__(self, index: int) -> Episode:
        return self.episode(index)
