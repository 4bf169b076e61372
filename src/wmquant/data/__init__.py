"""Trajectory datasets: `load_dataset(env, path, split)` reads DINO-WM's on-disk layouts (official
archives and what `wmquant data` writes); `generate_dataset` writes them."""

from __future__ import annotations

import os
from typing import Any

from ..envs import ENV_NAMES
from ..errors import ConfigError, DatasetError
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


# Files that only one env's layout has at the top of a dataset directory.
_LAYOUT_SIGNATURES = {"wall": ("door_locations.pth", "wall_locations.pth"), "pusht": ("train/rel_actions.pth", "val/rel_actions.pth")}


def dataset_env(path: str | os.PathLike) -> str | None:
    """The env a dataset directory was made for: from the manifest `wmquant data` writes, else from
    its layout (None if neither tells)."""
    import json
    from pathlib import Path

    root = Path(path)
    manifest = root / "wmquant_dataset.json"
    if manifest.is_file():
        try:
            env = json.loads(manifest.read_text()).get("env")
        except (ValueError, AttributeError):
            env = None
        if isinstance(env, str):
            return env
    for env, files in _LAYOUT_SIGNATURES.items():
        if any((root / name).is_file() for name in files):
            return env
    return None


def load_dataset(env_name: str, path: str | os.PathLike, split: str = "train", **kwargs: Any) -> TrajectoryDataset:
    """The `split` of the dataset at `path` for `env_name` ("wall": `WallDataset`, "pusht":
    `PushTDataset`); extra keyword arguments go to the dataset class. A dataset made for another env
    is refused before anything is read."""
    found = dataset_env(path)
    if found is not None and env_name in ENV_NAMES and found != env_name:
        raise DatasetError(f"dataset_path {path} holds a {found!r} dataset; env={env_name} needs a {env_name!r} dataset")
    if env_name == "wall":
        from .wall import WallDataset

        return WallDataset(path, split=split, **kwargs)
    if env_name == "pusht":
        from .pusht import PushTDataset

        return PushTDataset(path, split, **kwargs)
    raise ConfigError(f"unknown env {env_name!r}; valid envs: {', '.join(ENV_NAMES)}")
