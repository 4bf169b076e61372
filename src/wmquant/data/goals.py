"""Goal files: the trajectories a planning protocol draws its goals from, without frames.

PushT planning draws each episode as a segment of a dataset trajectory: it starts from the state at
a random frame and replays the next goal_H x frameskip actions in the env to reach the goal, whose
frames are rendered from states. So states, actions and layouts are all it needs. A goal file holds
them for a validation split (evaluation episodes) and a training split (calibration episodes) in
safetensors, next to a shipped model, so that planning runs with no dataset on disk.

Layout (safetensors; a split's episodes are concatenated along time):

    {split}/states    float32 (sum T, S)   raw env states
    {split}/actions   float32 (sum T, A)   raw env actions (what `env.step` takes)
    {split}/lengths   int64 (N,)           frames of each episode
    metadata: format "wmquant-goals-1", env, normalization (JSON), {split}/env_infos (JSON list),
              source (JSON: how the trajectories were made)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..errors import DatasetError
from ..io import atomic_path
from .base import Episode, Normalization, Trajectory, TrajectoryDataset

GOALS_FILE = "goals.safetensors"
FORMAT = "wmquant-goals-1"
SPLITS = ("train", "val")


def write_goal_file(
    path: str | os.PathLike,
    env_name: str,
    normalization: Normalization,
    splits: Mapping[str, Sequence[Trajectory]],
    source: Mapping[str, Any],
) -> Path:
    """Write trajectories per split ("train" and/or "val") to `path` atomically."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    metadata = {
        "format": FORMAT,
        "env": env_name,
        "normalization": json.dumps(normalization.as_dict()),
        "source": json.dumps(dict(source), default=str),
    }
    for split, trajectories in splits.items():
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not trajectories:
            raise ValueError(f"split {split!r} has no trajectories")
        tensors[f"{split}/states"] = torch.cat([t.states.to(torch.float32) for t in trajectories]).contiguous()
        tensors[f"{split}/actions"] = torch.cat([t.actions.to(torch.float32) for t in trajectories]).contiguous()
        tensors[f"{split}/lengths"] = torch.tensor([len(t.states) for t in trajectories], dtype=torch.int64)
        metadata[f"{split}/env_infos"] = json.dumps([t.env_info for t in trajectories])
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def goal_file_from_dataset(
    dataset_path: str | os.PathLike, env_name: str, out: str | os.PathLike, train_episodes: int, val_episodes: int | None = None
) -> Path:
    """A goal file from a dataset on disk: the first `val_episodes` (default all) of its validation
    split and the first `train_episodes` of its training split (calibration draws from these)."""
    from . import load_dataset

    splits: dict[str, list[Trajectory]] = {}
    for split, count in (("val", val_episodes), ("train", train_episodes)):
        dataset = load_dataset(env_name, dataset_path, split=split)
        normalization = dataset.normalization
        count = len(dataset) if count is None else min(int(count), len(dataset))
        splits[split] = [dataset.trajectory(i) for i in range(count)]
    manifest = Path(dataset_path) / "wmquant_dataset.json"
    source = json.loads(manifest.read_text()) if manifest.is_file() else {"dataset": str(dataset_path)}
    source = {key: source[key] for key in ("env", "episodes", "seed", "steps", "generator", "generator_version", "env_kwargs") if key in source}
    source.update({"train_episodes_kept": len(splits["train"]), "val_episodes_kept": len(splits["val"])})
    return write_goal_file(out, env_name, normalization, splits, source)


class GoalTrajectories(TrajectoryDataset):
    """One split of a goal file, as a dataset of frameless trajectories."""

    def __init__(self, path: str | os.PathLike, split: str, env_name: str):
        from safetensors import safe_open

        path = Path(path)
        if split not in SPLITS:
            raise DatasetError(f"goal file split must be one of {', '.join(SPLITS)}, got {split!r}")
        if not path.is_file():
            raise DatasetError(f"goal file {path} is missing; reinstall wmquant or set dataset_path=DIR")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                keys = set(handle.keys())
                wanted = [f"{split}/{name}" for name in ("states", "actions", "lengths")]
                tensors = {key: handle.get_tensor(key) for key in wanted if key in keys}
            normalization = Normalization.from_dict(json.loads(metadata["normalization"]))
            env_infos = json.loads(metadata.get(f"{split}/env_infos", "null"))
        except Exception as error:  # safetensors and json raise several types for corrupt files
            raise DatasetError(f"goal file {path} is corrupt: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None
        if metadata.get("format") != FORMAT:
            raise DatasetError(f"goal file {path} has format {metadata.get('format')!r}; expected {FORMAT!r}")
        if metadata.get("env") != env_name:
            raise DatasetError(f"goal file {path} holds {metadata.get('env')!r} trajectories; expected {env_name!r}")
        if len(tensors) != 3:
            raise DatasetError(f"goal file {path} has no {split!r} split")
        states, actions, lengths = (tensors[key] for key in wanted)
        total = int(lengths.sum())
        if (
            lengths.ndim != 1
            or (lengths < 1).any()
            or states.ndim != 2
            or actions.ndim != 2
            or states.shape[0] != total
            or actions.shape[0] != total
            or not isinstance(env_infos, list)
            or len(env_infos) != len(lengths)
        ):
            raise DatasetError(f"goal file {path} is corrupt: split {split!r} has inconsistent shapes")
        if not (torch.isfinite(states).all() and torch.isfinite(actions).all()):
            raise DatasetError(f"goal file {path} is corrupt: NaN or inf in split {split!r}")
        self.env_name = env_name
        self.normalization = normalization
        self.path = path
        self.source = json.loads(metadata.get("source", "{}"))
        self._lengths = [int(n) for n in lengths]
        self._starts = [0, *torch.cumsum(lengths, 0).tolist()]
        self._states, self._actions, self._env_infos = states, actions, env_infos

    def __len__(self) -> int:
        return len(self._lengths)

    def seq_length(self, index: int) -> int:
        return self._lengths[index]

    def trajectory(self, index: int) -> Trajectory:
        start, end = self._starts[index], self._starts[index + 1]
        return Trajectory(self._states[start:end].clone(), self._actions[start:end].clone(), dict(self._env_infos[index]))

    def episode(self, index: int) -> Episode:
        raise DatasetError(f"goal file {self.path} holds no frames; train or render from a dataset (dataset_path=DIR)")
