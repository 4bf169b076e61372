"""The `wall_single` on-disk layout (spec 1.10): reader and generator.

    DIR/states.pth          float (N, T, 2)  dot position per frame (x, y), before the action
    DIR/actions.pth         float (N, T, 2)  action taken after frame t, in env units (move = 2 * action)
    DIR/door_locations.pth  (N, T, 1)        door centre row, constant per episode (frame 0 is read)
    DIR/wall_locations.pth  (N, T, 1)        wall centre column, likewise
    DIR/obses/episode_{i:03d}.pth  (T + 1, 3, H, W) frames, values in [0, 255]; the last is never read

The official archive stores frames as float32 at 224 x 224 (upsampled from the env's 65 x 65);
`generate_wall_dataset` writes uint8 frames at the native 65 x 65 (50x smaller, no resampling).
`WallDataset` reads both: frames are returned as stored and resized only by
`wmquant.data.transforms.to_model_input`. Every tensor file is read with
`torch.load(weights_only=True)`, which refuses arbitrary pickled objects.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from scipy.special import ndtr, ndtri
from tqdm.auto import tqdm

from ..envs.wall import (
    BORDER_HIGH,
    BORDER_LOW,
    DEFAULT_DOOR_Y,
    DEFAULT_WALL_X,
    DOOR_HALF_HEIGHT,
    IMG_SIZE,
    WALL_HALF_WIDTH,
    WallBatchEnv,
    WallLayout,
)
from ..errors import ConfigError, DatasetError
from .base import Episode, Normalization, TrajectoryDataset

STATES_FILE = "states.pth"
ACTIONS_FILE = "actions.pth"
DOORS_FILE = "door_locations.pth"
WALLS_FILE = "wall_locations.pth"
OBS_DIR = "obses"
SPLITS = ("train", "val", "all")
SPLIT_RATIO = 0.9
SPLIT_SEED = 42


def episode_frames_path(root: Path, index: int) -> Path:
    return Path(root) / OBS_DIR / f"episode_{index:03d}.pth"


def load_tensor(path: Path) -> torch.Tensor:
    """One tensor file, or a DatasetError naming the file and what is wrong."""
    if not path.is_file():
        raise DatasetError(f"missing dataset file {path}")
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, zip errors...
        reason = " ".join(str(exc).split())[:200]
        raise DatasetError(f"cannot read {path} as a tensor file ({type(exc).__name__}: {reason})") from None
    if not isinstance(value, torch.Tensor):
        raise DatasetError(f"{path} holds a {type(value).__name__}, expected a tensor")
    return value


def _first_per_episode(values: torch.Tensor, path: Path, episodes: int) -> torch.Tensor:
    """Layout value of frame 0 of each episode from (N, T, 1), (N, T) or (N,) -> (N,) int64."""
    if values.ndim == 0 or values.shape[0] != episodes or values[0].numel() == 0:
        raise DatasetError(f"{path} has shape {tuple(values.shape)}; expected ({episodes}, T, 1)")
    first = values.reshape(episodes, -1)[:, 0].double()
    if not torch.all(first == first.round()):
        raise DatasetError(f"{path} holds non-integer pixel positions, e.g. {first[first != first.round()][0].item()}")
    return first.long()


def _split_ids(episodes: int, split: str, ratio: float, seed: int) -> list[int]:
    """Upstream's random split: randperm(N, seed 42); the first int(0.9 N) are train, the rest val."""
    if split == "all":
        return list(range(episodes))
    order = torch.randperm(episodes, generator=torch.Generator().manual_seed(seed)).tolist()
    n_train = int(ratio * episodes)
    return order[:n_train] if split == "train" else order[n_train:]


def _mean_std(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased std over (episode, time). A constant or single-sample dimension gets std 1
    (upstream would divide by 0 or NaN)."""
    flat = values.reshape(-1, values.shape[-1]).double()
    mean = flat.mean(dim=0)
    std = flat.std(dim=0) if flat.shape[0] > 1 else torch.ones_like(mean)
    std = torch.where(torch.isfinite(std) & (std > 0), std, torch.ones_like(std))
    return mean.float(), std.float()


class WallDataset(TrajectoryDataset):
    """A split of a Wall dataset (spec 1.10), official or wmquant-generated.

    split: "train" / "val" (upstream's random 90/10 split, randperm seed 42; "valid" is accepted
        for "val") or "all" (every episode in file order).
    n_rollout: keep only the first n episodes before splitting (upstream's option).
    normalize: compute action/proprio/state mean and unbiased std over (episode, time) of the whole
        dataset before the split, as upstream training does; False gives mean 0, std 1.

    `episode(i)` loads frames lazily: visual (T, 3, H, W) as stored (uint8 or float32 in [0, 255]);
    proprio = states (T, 2) and actions (T, 2) raw float32; env_info {"fix_door_location": int,
    "fix_wall_location": int} for `update_env`.
    """

    env_name = "wall"

    def __init__(
        self,
        path: str | os.PathLike,
        split: str = "train",
        n_rollout: int | None = None,
        normalize: bool = True,
        split_ratio: float = SPLIT_RATIO,
        split_seed: int = SPLIT_SEED,
    ):
        self.path = Path(path)
        split = "val" if split == "valid" else split
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; valid: {', '.join(SPLITS)} ('valid' = 'val')")
        if not 0.0 < float(split_ratio) < 1.0:
            raise ConfigError(f"split_ratio must lie strictly between 0 and 1, got {split_ratio!r}")
        if n_rollout is not None and (isinstance(n_rollout, bool) or int(n_rollout) <= 0):
            raise ConfigError(f"n_rollout must be a positive integer or None, got {n_rollout!r}")
        if not self.path.is_dir():
            raise DatasetError(
                f"Wall dataset directory {self.path} does not exist; expected {STATES_FILE}, {ACTIONS_FILE}, "
                f"{DOORS_FILE}, {WALLS_FILE} and {OBS_DIR}/episode_NNN.pth"
            )
        self.split = split
        states, actions = load_tensor(self.path / STATES_FILE), load_tensor(self.path / ACTIONS_FILE)
        if states.ndim != 3 or actions.ndim != 3 or states.shape[:2] != actions.shape[:2]:
            raise DatasetError(
                f"{self.path}: {STATES_FILE} {tuple(states.shape)} and {ACTIONS_FILE} {tuple(actions.shape)} "
                "must both be (N, T, D) with the same N and T"
            )
        total = states.shape[0] if n_rollout is None else min(int(n_rollout), states.shape[0])
        if total == 0 or states.shape[1] == 0:
            raise DatasetError(f"{self.path}: {STATES_FILE} has shape {tuple(states.shape)}, no steps to read")
        doors = _first_per_episode(load_tensor(self.path / DOORS_FILE), self.path / DOORS_FILE, states.shape[0])
        walls = _first_per_episode(load_tensor(self.path / WALLS_FILE), self.path / WALLS_FILE, states.shape[0])
        missing = [i for i in range(total) if not episode_frames_path(self.path, i).is_file()]
        if missing:
            raise DatasetError(
                f"{self.path}: {len(missing)} episode frame files missing, first {episode_frames_path(self.path, missing[0])}"
            )

        self.states = states[:total].float()
        self.proprios = self.states  # Wall's proprio is its state
        self.actions = actions[:total].float()
        self.door_locations, self.wall_locations = doors[:total], walls[:total]
        self.traj_len = int(self.actions.shape[1])
        self.state_dim = self.proprio_dim = int(self.states.shape[-1])
        self.action_dim = int(self.actions.shape[-1])
        self.normalization = self._normalization(normalize)
        self.episode_ids = _split_ids(total, split, float(split_ratio), int(split_seed))

    def _normalization(self, normalize: bool) -> Normalization:
        if normalize:
            (action_mean, action_std), (state_mean, state_std) = _mean_std(self.actions), _mean_std(self.states)
        else:
            action_mean, action_std = torch.zeros(self.action_dim), torch.ones(self.action_dim)
            state_mean, state_std = torch.zeros(self.state_dim), torch.ones(self.state_dim)
        return Normalization(action_mean, action_std, state_mean, state_std, state_mean, state_std)

    def __len__(self) -> int:
        return len(self.episode_ids)

    def seq_length(self, index: int) -> int:
        return self.traj_len

    def env_info(self, index: int) -> dict[str, int]:
        file_index = self.episode_ids[index]
        return {
            "fix_door_location": int(self.door_locations[file_index]),
            "fix_wall_location": int(self.wall_locations[file_index]),
        }

    def episode(self, index: int) -> Episode:
        if not -len(self) <= index < len(self):
            raise IndexError(f"episode {index} out of range for a split of {len(self)} episodes")
        file_index = self.episode_ids[index]
        path = episode_frames_path(self.path, file_index)
        frames = load_tensor(path)
        if frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[0] < self.traj_len:
            raise DatasetError(
                f"{path} has shape {tuple(frames.shape)}; expected (T >= {self.traj_len}, 3, H, W) frames"
            )
        if frames.dtype != torch.uint8 and not frames.is_floating_point():
            raise DatasetError(f"{path} has dtype {frames.dtype}; expected uint8 or float frames in [0, 255]")
        return Episode(
            visual=frames[: self.traj_len],
            proprio=self.proprios[file_index],
            actions=self.actions[file_index],
            states=self.states[file_index],
            env_info=self.env_info(index),
        )


# --------------------------------------------------------------------------------------------------
# Generation (spec 1.11's random walk, driven through the env with its factor 2)

HEADING_CONCENTRATION = 1 / 0.2  # von Mises concentration of the per-step heading change
STEP_MEAN, STEP_STD, STEP_LOW, STEP_HIGH = 1.0, 0.4, 0.2, 1.8  # truncated-normal action length
DEFAULT_STEPS = 50  # actions per episode (51 frames), as in wall_single
RANDOM_WALL_X = (20, 45)  # upstream's layout ranges with fix_wall=False (end exclusive)
RANDOM_DOOR_Y = (10, 55)
START_MARGIN = 0.5  # start positions keep this distance from the border lines and the wall faces
CHUNK_EPISODES = 64  # episodes per vectorised chunk; fixed so results do not depend on worker count
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class _WalkSettings:
    seed: int
    steps: int
    layout: WallLayout
    random_layouts: bool


def _episode_plan(settings: _WalkSettings, episode: int) -> tuple[WallLayout, np.ndarray, np.ndarray]:
    """Layout, start (2,) and actions (T, 2) of one episode, from its own seed sequence, so that an
    episode does not depend on how episodes are split between workers."""
    rng = np.random.default_rng([settings.seed, episode])
    layout = settings.layout
    if settings.random_layouts:
        layout = WallLayout(int(rng.integers(*RANDOM_WALL_X)), int(rng.integers(*RANDOM_DOOR_Y)))
    low, high = BORDER_LOW + START_MARGIN, BORDER_HIGH - START_MARGIN
    start = rng.uniform(low, high, size=2)
    in_band = abs(start[0] - layout.wall_x) <= WALL_HALF_WIDTH + START_MARGIN
    if in_band and abs(start[1] - layout.door_y) > DOOR_HALF_HEIGHT:
        # inside the solid wall: move to a random side, as upstream's generator does
        if rng.random() < 0.5:
            start[0] = rng.uniform(low, layout.wall_x - WALL_HALF_WIDTH - START_MARGIN)
        else:
            start[0] = rng.uniform(layout.wall_x + WALL_HALF_WIDTH + START_MARGIN, high)

    heading = rng.uniform(0.0, 2 * math.pi)
    turns = rng.vonmises(0.0, HEADING_CONCENTRATION, size=settings.steps - 1)
    headings = heading + np.concatenate([[0.0], np.cumsum(turns)])
    # truncated normal by inverse CDF on the truncated range of the unit normal
    bounds = ndtr([(STEP_LOW - STEP_MEAN) / STEP_STD, (STEP_HIGH - STEP_MEAN) / STEP_STD])
    lengths = STEP_MEAN + STEP_STD * ndtri(rng.uniform(bounds[0], bounds[1], size=settings.steps))
    lengths = np.clip(lengths, STEP_LOW, STEP_HIGH)
    actions = np.stack([np.cos(headings), np.sin(headings)], axis=1) * lengths[:, None]
    # The env runs on exactly what is stored (float32), so replaying the file reproduces the frames.
    return layout, start.astype(np.float32), actions.astype(np.float32)


def _sides(x: np.ndarray, wall_x: np.ndarray) -> np.ndarray:
    """-1 left of the wall band, +1 right of it, 0 inside it (in the door)."""
    offset = x - wall_x[:, None]
    return np.where(offset < -WALL_HALF_WIDTH, -1, np.where(offset > WALL_HALF_WIDTH, 1, 0))


def _generate_chunk(out_dir: Path, settings: _WalkSettings, episodes: range) -> dict[str, np.ndarray]:
    """Simulate and render `episodes`, write their frame files, return their low-dim arrays."""
    plans = [_episode_plan(settings, i) for i in episodes]
    env = WallBatchEnv(len(plans))
    env.update_env([layout.as_env_info() for layout, _, _ in plans])
    actions = np.stack([a for _, _, a in plans])
    obs, state = env.reset_to(np.stack([s for _, s, _ in plans]).astype(np.float64))
    frames = np.empty((len(plans), settings.steps + 1, *obs["visual"].shape[1:]), dtype=np.uint8)
    states = np.empty((len(plans), settings.steps + 1, 2))
    collided = np.empty((len(plans), settings.steps), dtype=bool)
    frames[:, 0], states[:, 0] = obs["visual"], state
    for t in range(settings.steps):
        obs, state = env.step(actions[:, t].astype(np.float64))
        frames[:, t + 1], states[:, t + 1], collided[:, t] = obs["visual"], state, env.collided
    for row, episode in enumerate(episodes):
        channels_first = torch.from_numpy(np.ascontiguousarray(frames[row].transpose(0, 3, 1, 2)))
        torch.save(channels_first, episode_frames_path(out_dir, episode))
    sides = _sides(states[:, :, 0], env.wall_x)
    return {
        "states": states[:, :-1].astype(np.float32),
        "actions": actions,
        "wall_x": env.wall_x.copy(),
        "door_y": env.door_y.copy(),
        "crossed": (sides == -1).any(axis=1) & (sides == 1).any(axis=1),
        "collided": collided,
    }


def _chunks(episodes: int) -> list[range]:
    return [range(begin, min(begin + CHUNK_EPISODES, episodes)) for begin in range(0, episodes, CHUNK_EPISODES)]


def _run_chunks(out_dir: Path, settings: _WalkSettings, episodes: int, workers: int, progress: bool) -> Iterator[dict]:
    chunks = _chunks(episodes)
    bar = tqdm(total=episodes, desc="wall episodes", unit="ep", disable=not progress)
    with bar:
        if workers <= 1 or len(chunks) == 1:
            for chunk in chunks:
                yield _generate_chunk(out_dir, settings, chunk)
                bar.update(len(chunk))
            return
        # spawn: workers start clean (no inherited torch/OpenMP thread state)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=context) as pool:
            futures = [pool.submit(_generate_chunk, out_dir, settings, chunk) for chunk in chunks]
            try:
                for chunk, future in zip(chunks, futures):
                    yield future.result()
                    bar.update(len(chunk))
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # do not finish a dataset that failed
                raise


def generate_wall_dataset(
    out_dir: Path,
    episodes: int,
    seed: int,
    steps: int | None,
    workers: int,
    progress: bool,
    wall_x: int = DEFAULT_WALL_X,
    door_y: int = DEFAULT_DOOR_Y,
    random_layouts: bool = False,
) -> dict[str, Any]:
    """Write `episodes` random-walk episodes of `steps` actions (default 50) into `out_dir` (an
    existing, empty directory; `generate_dataset` makes it atomic) in the layout of this module.

    Each episode: a start drawn uniformly in the free space; a heading drawn uniformly and turned by
    von Mises noise (concentration 5) each step; step lengths from N(1, 0.4) truncated to
    [0.2, 1.8]; action = length * (cos, sin), applied by the env as a move of 2 * action with its
    collision rule. Layout wall 32 / door 30 unless `random_layouts` (wall x in 20..44, door y in
    10..54 per episode). Deterministic for a seed whatever `workers` is.

    Worker processes are spawned, so a script that calls this at import time needs the usual
    `if __name__ == "__main__":` guard.

    Returns statistics: door_crossing_fraction (episodes that visit both sides of the wall),
    collision_step_fraction (steps stopped by a wall or border), action/state mean and std.
    """
    steps = DEFAULT_STEPS if steps is None else steps
    for name, value in (("episodes", episodes), ("steps", steps), ("workers", workers)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    settings = _WalkSettings(int(seed), int(steps), WallLayout(int(wall_x), int(door_y)), bool(random_layouts))
    out_dir = Path(out_dir)
    (out_dir / OBS_DIR).mkdir(parents=True, exist_ok=True)

    parts: dict[str, list[np.ndarray]] = {}
    for chunk_result in _run_chunks(out_dir, settings, int(episodes), int(workers), progress):
        for key, value in chunk_result.items():
            parts.setdefault(key, []).append(value)
    arrays = {key: np.concatenate(values) for key, values in parts.items()}

    per_frame = (1, settings.steps, 1)
    torch.save(torch.from_numpy(arrays["states"]), out_dir / STATES_FILE)
    torch.save(torch.from_numpy(arrays["actions"]), out_dir / ACTIONS_FILE)
    torch.save(torch.from_numpy(arrays["door_y"])[:, None, None].repeat(per_frame), out_dir / DOORS_FILE)
    torch.save(torch.from_numpy(arrays["wall_x"])[:, None, None].repeat(per_frame), out_dir / WALLS_FILE)

    actions = arrays["actions"].reshape(-1, 2).astype(np.float64)
    states = arrays["states"].reshape(-1, 2).astype(np.float64)
    return {
        "episodes": int(episodes),
        "steps_per_episode": settings.steps,
        "frames_per_episode": settings.steps + 1,
        "frame_shape": [3, IMG_SIZE, IMG_SIZE],
        "distinct_layouts": len({(int(w), int(d)) for w, d in zip(arrays["wall_x"], arrays["door_y"])}),
        "door_crossing_fraction": float(arrays["crossed"].mean()),
        "collision_step_fraction": float(arrays["collided"].mean()),
        "action_mean": actions.mean(axis=0).tolist(),
        "action_std": actions.std(axis=0, ddof=1).tolist() if len(actions) > 1 else [1.0, 1.0],
        "state_mean": states.mean(axis=0).tolist(),
        "state_std": states.std(axis=0, ddof=1).tolist() if len(states) > 1 else [1.0, 1.0],
    }

