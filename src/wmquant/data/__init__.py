"""Trajectory datasets: `load_dataset(env, path, split)` reads DINO-WM's on-disk layouts (official
archives and what `wmquant data` writes); `generate_dataset` writes them."""

from __future__ import annotations

import os
from typing import Any

from ..envs import ENV_NAMES
from ..errors import ConfigError
from .base import Episode, Normalization, TrajectoryDataset
from .generate import generate_dataset
from .slicing import TrajectoryWindows, group_actions, shuffle_windows, window_index, window_starts
from .transforms import to_model_input

__all__ = [
    "Episode",
    "Normalization",
    "TrajectoryDataset",
    "TrajectoryWindows",
    "generate_dataset",
    "group_actions",
    "load_dataset",
    "shuffle_windows",
    "to_model_input",
    "window_index",
    "window_starts",
]


def load_dataset(env_name: str, path: str | os.PathLike, split: str = "train", **kwargs: Any) -> TrajectoryDataset:
    """The `split` of the dataset at `path` for `env_name` ("wall": `WallDataset`, "pusht":
    `PushTDataset`); extra keyword arguments go to the dataset class."""
    if env_name == "wall":
        from .wall import WallDataset

        return WallDataset(path, split=split, **kwargs)
    if env_name == "pusht":
        from .pusht import PushTDataset

        return PushTDataset(path, split, **kwargs)
    raise ConfigError(f"unknown env {env_name!r}; valid envs: {', '.join(ENV_NAMES)}")
