"""Frameskip windows over trajectories (spec 3.8, upstream's `TrajSlicerDataset`).

A window of `num_frames` frames with frameskip `f` starting at `s` covers frames s, s+f, ...,
s+(num_frames-1)f and the raw actions s .. s + num_frames*f - 1. Model step k gets the actions
s+kf .. s+kf+f-1 concatenated in time order, each action's components contiguous:
[a_x(t), a_y(t), a_x(t+1), a_y(t+1), ...], so the action width is f * A. The action attached to
frame k is the one taken after it. Starts run over s = 0 .. T - num_frames*f (inclusive); shorter
episodes contribute no window.

`TrajectoryWindows` keeps every episode in padded tensors so that a trainer gathers a batch of
windows with two indexing operations instead of one Python call per window.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import ConfigError, DatasetError
from .base import Episode, Normalization, TrajectoryDataset


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def window_starts(seq_length: int, num_frames: int, frameskip: int) -> range:
    """Start frames of all windows in an episode of `seq_length` frames (empty if too short)."""
    span = _positive_int(num_frames, "num_frames") * _positive_int(frameskip, "frameskip")
    return range(max(int(seq_length) - span + 1, 0))


def window_index(seq_lengths: Sequence[int], num_frames: int, frameskip: int) -> np.ndarray:
    """(M, 2) int64 rows (episode, start), episodes in order and starts ascending within each."""
    rows = [(episode, start) for episode, length in enumerate(seq_lengths)
            for start in window_starts(length, num_frames, frameskip)]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2)


def shuffle_windows(index: np.ndarray, seed: int = 0) -> np.ndarray:
    """The rows of `index` in a seeded random order: the same order as upstream's
    `np.random.seed(seed); np.random.permutation(slices)`."""
    return index[np.random.RandomState(seed).permutation(len(index))]


def group_actions(actions: torch.Tensor, num_frames: int, frameskip: int) -> torch.Tensor:
    """Raw actions (..., num_frames * frameskip, A) -> (..., num_frames, frameskip * A), time order kept."""
    *lead, steps, width = actions.shape
    if steps != num_frames * frameskip:
        raise ConfigError(f"need {num_frames * frameskip} raw actions for {num_frames} frames x frameskip {frameskip}, got {steps}")
    return actions.reshape(*lead, num_frames, frameskip * width)


class TrajectoryWindows(torch.utils.data.Dataset):
    """All windows of a set of episodes, ready for batched gathers.

    episodes: a `TrajectoryDataset` (its `normalization` is used unless one is given) or a list of
        `Episode`s. Every episode must have the same frame shape.
    visual_fn: applied to each episode's frames once, at construction (e.g. resize the official
        224 px float frames to uint8 at the model's resolution, to keep memory small).
    shuffle_seed: None keeps the table in (episode, start) order; an int shuffles it once like
        upstream (which uses seed 0).

    Items and batches are dicts: "visual" (B, num_frames, 3, H, W) in the stored dtype (uint8 for
    wmquant data; feed it to `transforms.to_model_input`), "proprio" (B, num_frames, P) and "actions"
    (B, num_frames, frameskip * A) normalised, "states" (B, num_frames, S) raw, "episode" and
    "start" (B,) int64.
    """

    def __init__(
        self,
        episodes: TrajectoryDataset | Sequence[Episode],
        num_frames: int,
        frameskip: int,
        normalization: Normalization | None = None,
        shuffle_seed: int | None = 0,
        visual_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.num_frames = _positive_int(num_frames, "num_frames")
        self.frameskip = _positive_int(frameskip, "frameskip")
        if normalization is None:
            normalization = getattr(episodes, "normalization", None)
        self.normalization = normalization
        count = len(episodes)
        if count == 0:
            raise DatasetError("no episodes to slice into windows")
        lengths = [self._seq_length(episodes, i) for i in range(count)]
        index = window_index(lengths, self.num_frames, self.frameskip)
        if len(index) == 0:
            raise DatasetError(
                f"no episode is long enough for {self.num_frames} frames x frameskip {self.frameskip} "
                f"(needs {self.num_frames * self.frameskip} steps; longest has {max(lengths)})"
            )
        self.index = index if shuffle_seed is None else shuffle_windows(index, shuffle_seed)
        self.seq_lengths = torch.tensor(lengths)
        self._fill(episodes, lengths, visual_fn)

    @staticmethod
    def _seq_length(episodes, i: int) -> int:
        if isinstance(episodes, TrajectoryDataset):
            return episodes.seq_length(i)
        return len(episodes[i])

    def _fill(self, episodes, lengths: list[int], visual_fn) -> None:
        """Copy episode by episode into preallocated padded tensors (peak memory: table + one episode)."""
        longest = max(lengths)
        for i, length in enumerate(lengths):
            episode = episodes.episode(i) if isinstance(episodes, TrajectoryDataset) else episodes[i]
            visual = episode.visual[:length]
            if visual_fn is not None:
                visual = visual_fn(visual)
            proprio, actions = episode.proprio[:length].float(), episode.actions[:length].float()
            if self.normalization is not None:
                proprio = self.normalization.normalize_proprio(proprio)
                actions = self.normalization.normalize_actions(actions)
            parts = {"visual": visual, "proprio": proprio, "actions": actions, "states": episode.states[:length]}
            if i == 0:
                self._tables = {
                    key: torch.zeros((len(lengths), longest, *value.shape[1:]), dtype=value.dtype)
                    for key, value in parts.items()
                }
            for key, value in parts.items():
                table = self._tables[key]
                if value.shape[0] != length or value.shape[1:] != table.shape[2:]:
                    raise DatasetError(
                        f"episode {i}: {key} has shape {tuple(value.shape)}, expected "
                        f"({length}, {', '.join(map(str, table.shape[2:]))}) like episode 0"
                    )
                table[i, :length] = value

    def __len__(self) -> int:
        return len(self.index)

    def gather(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """The windows at rows `indices` of the (shuffled) table, stacked into a batch."""
        rows = torch.as_tensor(np.asarray(indices, dtype=np.int64).reshape(-1))
        if rows.numel() and (rows.min() < 0 or rows.max() >= len(self.index)):
            raise ConfigError(f"window indices must lie in 0..{len(self.index) - 1}")
        picked = torch.from_numpy(self.index)[rows]
        episode, start = picked[:, 0], picked[:, 1]
        frame_steps = torch.arange(self.num_frames) * self.frameskip
        frames = start[:, None] + frame_steps[None, :]
        action_steps = start[:, None] + torch.arange(self.num_frames * self.frameskip)[None, :]
        episode_col = episode[:, None]
        actions = self._tables["actions"][episode_col, action_steps]
        return {
            "visual": self._tables["visual"][episode_col, frames],
            "proprio": self._tables["proprio"][episode_col, frames],
            "actions": group_actions(actions, self.num_frames, self.frameskip),
            "states": self._tables["states"][episode_col, frames],
            "episode": episode,
            "start": start,
        }

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {key: value[0] for key, value in self.gather([i]).items()}

    def batches(self, batch_size: int, drop_last: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        """Consecutive batches over the table (shuffle the table, not the batches, for upstream's order)."""
        batch_size = _positive_int(batch_size, "batch_size")
        stop = len(self) - (len(self) % batch_size if drop_last else 0)
        for begin in range(0, stop, batch_size):
            yield self.gather(np.arange(begin, min(begin + batch_size, stop)))
