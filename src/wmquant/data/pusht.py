"""PushT trajectories in DINO-WM's `pusht_noise` layout (spec 2.10): the reader and a generator.

Layout of a dataset directory (one folder per split):

    {path}/{train,val}/states.pth        float (N, T_max, 5)  agent x, y, block x, y, angle
                       velocities.pth    float (N, T_max, 2)  agent velocity (px/s)
                       rel_actions.pth   float (N, T_max, 2)  actions in px (env units x 100)
                       seq_lengths.pkl   N ints: valid frames of each episode (arrays are padded)
                       shapes.pkl        optional, N block names (default all "T")
                       obses/episode_{i:03d}.mp4   frames of episode i (or .pth: uint8 (T, 3, H, W))

Frame t is observed before action t. The official archive stores lossy H.264 videos (decoded upstream
with decord); wmquant writes lossless RGB H.264 (libx264rgb, qp 0) or uint8 tensors, and reads all of
them (videos with PyAV).
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..envs import pusht as pusht_env
from ..errors import ConfigError, DatasetError
from ..io import atomic_directory, atomic_path, write_bytes
from .base import Episode, Trajectory, TrajectoryDataset
from .pusht_official import NORMALIZATION, PIXELS_PER_ACTION_UNIT
from .pusht_policies import DEFAULT_POLICY, ScriptedExpert, ScriptedPusher, make_policy, policy_class
from .pusht_stats import compare_with_official, segment_distribution

GENERATOR_VERSION = 2  # bump when a scripted policy or the written layout changes
SPLITS = ("train", "val")
VIDEO_FORMATS = ("mp4", "pth")
DEFAULT_STEPS = ScriptedPusher.default_steps  # the pusher's episode length
EXPERT_MAX_STEPS = ScriptedExpert.default_steps  # the expert's cap; it ends an episode once done
VAL_FRACTION = 0.1

def pixels_to_env_actions(rel_actions_px: torch.Tensor) -> torch.Tensor:
    """Stored relative actions (px, float32) -> env units (float32). The generator feeds the env
    exactly these values, so a generated episode replays bit for bit from its loaded actions."""
    return rel_actions_px.to(torch.float32) / PIXELS_PER_ACTION_UNIT


def episode_frames_name(index: int, suffix: str) -> str:
    """`episode_007.mp4`: at least three digits, as upstream formats it."""
    return f"episode_{index:03d}.{suffix}"


# --------------------------------------------------------------------------------------------------
# Reading


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickles lists/tuples of ints and strings, and numpy arrays/scalars of them; refuses any
    other global (an official `.pkl` is data, never code)."""

    _ALLOWED = {
        ("builtins", "list"),
        ("builtins", "tuple"),
        ("builtins", "int"),
        ("builtins", "str"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load_pickled_list(path: Path) -> list[Any]:
    try:
        with open(path, "rb") as handle:
            value = _PlainDataUnpickler(handle).load()
    except FileNotFoundError:
        raise DatasetError(f"missing {path}") from None
    except Exception as error:
        raise DatasetError(f"cannot read {path}: {error}; expected a pickled list of ints or strings") from None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise DatasetError(f"{path} holds a {type(value).__name__}; expected a list")
    return [v.item() if isinstance(v, np.generic) else v for v in value]


def _load_tensor(path: Path) -> torch.Tensor:
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DatasetError(f"missing {path}") from None
    except Exception as error:
        raise DatasetError(f"cannot read tensor file {path}: {type(error).__name__}: {error}") from None
    if not isinstance(value, torch.Tensor):
        raise DatasetError(f"{path} holds a {type(value).__name__}; expected a tensor")
    return value


def read_video(path: Path) -> np.ndarray:
    """All frames of a video file as uint8 (T, H, W, 3) RGB, decoded with PyAV."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    except FileNotFoundError:
        raise DatasetError(f"missing video {path}") from None
    except (av.FFmpegError, IndexError, ValueError) as error:
        raise DatasetError(f"cannot decode video {path}: {error}") from None
    if not frames:
        raise DatasetError(f"video {path} has no frames")
    return np.stack(frames)


def write_video(path: Path, frames: np.ndarray, fps: int = pusht_env.CONTROL_HZ) -> None:
    """Write uint8 (T, H, W, 3) RGB frames as a lossless H.264 MP4 (libx264rgb, qp 0): decoding gives
    back exactly these pixels."""
    import av

    if "libx264rgb" not in av.codecs_available:
        raise ConfigError("this PyAV build has no libx264rgb encoder for lossless MP4; use video='pth'")
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264rgb", rate=fps)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "rgb24"
            stream.options = {"qp": "0", "preset": "veryfast"}
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            container.mux(stream.encode())


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    return buffer.getvalue()


def read_frames(path: Path) -> np.ndarray:
    """Frames of one episode as uint8 (T, H, W, 3), from an `.mp4` or a uint8 (T, 3, H, W) `.pth`."""
    if path.suffix == ".pth":
        tensor = _load_tensor(path)
        if tensor.dtype != torch.uint8 or tensor.ndim != 4 or tensor.shape[1] != 3:
            raise DatasetError(f"{path} holds {tuple(tensor.shape)} {tensor.dtype}; expected uint8 (T, 3, H, W)")
        return tensor.permute(0, 2, 3, 1).numpy()
    return read_video(path)


class PushTDataset(TrajectoryDataset):
    """One split ("train" or "val") of a PushT dataset in the layout above.

    Arrays are read at construction (they are small); frames are decoded when an episode is asked
    for, so opening a 2000-episode dataset costs no video decoding. `frame_cache` keeps that many
    decoded episodes (least recently used first out).
    """

    env_name = "pusht"
    normalization = NORMALIZATION

    def __init__(self, path: str | os.PathLike, split: str = "train", frame_cache: int = 0):
        if split not in SPLITS:
            raise ConfigError(f"PushT split must be one of {', '.join(SPLITS)}, got {split!r}")
        root = Path(path)
        if not root.is_dir():
            raise DatasetError(f"PushT dataset directory {root} does not exist or is not a directory")
        self.split_dir = root / split
        if not self.split_dir.is_dir():
            raise DatasetError(f"PushT dataset {root} has no {split}/ folder")

        states = _load_tensor(self.split_dir / "states.pth")
        velocities = _load_tensor(self.split_dir / "velocities.pth")
        rel_actions = _load_tensor(self.split_dir / "rel_actions.pth")
        self._check_shapes(states=(states, 5), velocities=(velocities, 2), rel_actions=(rel_actions, 2))
        count, max_length = states.shape[:2]

        lengths = _load_pickled_list(self.split_dir / "seq_lengths.pkl")
        if len(lengths) != count or not all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= max_length for n in lengths):
            raise DatasetError(
                f"{self.split_dir / 'seq_lengths.pkl'} must hold {count} ints in [1, {max_length}] "
                f"(one per episode of states.pth), got {len(lengths)} values"
            )
        shapes_file = self.split_dir / "shapes.pkl"
        shapes = _load_pickled_list(shapes_file) if shapes_file.exists() else [pusht_env.TEE.name] * count
        if len(shapes) != count or not all(isinstance(s, str) for s in shapes):
            raise DatasetError(f"{shapes_file} must hold {count} shape names, got {len(shapes)} values")

        self._states = torch.cat([states, velocities], dim=-1).to(torch.float32)
        self._actions = pixels_to_env_actions(rel_actions)
        if not (torch.isfinite(self._states).all() and torch.isfinite(self._actions).all()):
            raise DatasetError(f"{self.split_dir} has NaN or inf in states, velocities or rel_actions")
        self._lengths = lengths
        self._shapes = shapes
        self._frame_files = self._find_frame_files(count)
        self._frame_cache_size = int(frame_cache)
        self._frame_cache: dict[int, torch.Tensor] = {}

    def _check_shapes(self, **arrays: tuple[torch.Tensor, int]) -> None:
        reference: tuple[int, int] | None = None
        for name, (tensor, width) in arrays.items():
            if tensor.ndim != 3 or tensor.shape[2] != width:
                raise DatasetError(f"{self.split_dir / name}.pth has shape {tuple(tensor.shape)}; expected (N, T_max, {width})")
            if reference is None:
                reference = tuple(tensor.shape[:2])
            elif tuple(tensor.shape[:2]) != reference:
                raise DatasetError(
                    f"{self.split_dir / name}.pth has shape {tuple(tensor.shape)}; expected (N, T_max) = {reference} as states.pth"
                )

    def _find_frame_files(self, count: int) -> list[Path]:
        obses = self.split_dir / "obses"
        present = set(os.listdir(obses)) if obses.is_dir() else set()
        files = []
        for index in range(count):
            for suffix in VIDEO_FORMATS:
                if episode_frames_name(index, suffix) in present:
                    files.append(obses / episode_frames_name(index, suffix))
                    break
            else:
                raise DatasetError(f"missing frames of episode {index}: no {obses / episode_frames_name(index, 'mp4')} (or .pth)")
        return files

    def __len__(self) -> int:
        return len(self._lengths)

    def seq_length(self, index: int) -> int:
        return self._lengths[self._check_index(index)]

    def env_info(self, index: int) -> dict[str, Any]:
        """What `PushTEnv.update_env` needs for this episode: {"shape": name}."""
        return {"shape": self._shapes[self._check_index(index)]}

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"episode {index} out of range for {len(self)} episodes")
        return index % len(self)

    def frames(self, index: int) -> torch.Tensor:
        """Frames of episode `index`: uint8 (T, 3, H, W), T = its sequence length."""
        index = self._check_index(index)
        if index in self._frame_cache:
            self._frame_cache[index] = self._frame_cache.pop(index)  # most recently used goes last
            return self._frame_cache[index]
        path, length = self._frame_files[index], self._lengths[index]
        frames = read_frames(path)
        if frames.shape[0] < length:
            raise DatasetError(f"{path} has {frames.shape[0]} frames; seq_lengths.pkl says {length}")
        visual = torch.from_numpy(np.ascontiguousarray(frames[:length])).permute(0, 3, 1, 2).contiguous()
        if self._frame_cache_size > 0:
            self._frame_cache[index] = visual
            while len(self._frame_cache) > self._frame_cache_size:
                self._frame_cache.pop(next(iter(self._frame_cache)))
        return visual

    def trajectory(self, index: int) -> Trajectory:
        index = self._check_index(index)
        length = self._lengths[index]
        return Trajectory(
            states=self._states[index, :length].clone(),
            actions=self._actions[index, :length].clone(),
            env_info=self.env_info(index),
        )

    def episode(self, index: int) -> Episode:
        index = self._check_index(index)
        length = self._lengths[index]
        states = self._states[index, :length]
        return Episode(
            visual=self.frames(index),
            proprio=states[:, [0, 1, 5, 6]],  # advanced indexing copies
            actions=self._actions[index, :length].clone(),
            states=states.clone(),
            env_info=self.env_info(index),
        )


# --------------------------------------------------------------------------------------------------
# Generation


@dataclass(frozen=True)
class _EpisodeJob:
    index: int  # global episode index: decides the episode's random stream
    split_dir: str
    local_index: int  # index within its split: decides the frame file name
    seed: int
    steps: int
    render_size: int
    video: str
    policy: str


def _random_initial_state(rng: np.random.Generator) -> np.ndarray:
    """Spec 2.8's ranges with a uniform angle; float32-representable so that the stored (float32)
    initial state is the exact one the episode started from."""
    agent = rng.integers(50, 450, 2)
    block = rng.integers(100, 400, 2)
    angle = rng.uniform(0.0, 2 * math.pi)
    return np.array([*agent, *block, angle, 0.0, 0.0], dtype=np.float32).astype(np.float64)


def default_steps(policy: str) -> int:
    """Frames per episode: the pusher's fixed length, or the expert's cap (it stops once done)."""
    return policy_class(policy).default_steps


def generate_episode(
    index: int, seed: int, steps: int, render_size: int | None, policy: str = DEFAULT_POLICY
) -> dict[str, np.ndarray]:
    """One scripted episode (episode `index` of a dataset with this `seed`): `steps` frames for the
    pusher; for the expert at most `steps`, ending when it has reached the goal pose, backed off and
    hovered.

    Returns frames uint8 (T, R, R, 3) (absent with render_size None: states only), states float32
    (T, 5), velocities float32 (T, 2), rel_actions float32 (T, 2) in px, and reached_goal (bool).
    Action t is taken after frame t; the last one's outcome is not recorded.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    # exact reset: the stored first state is the sampled one (float32-representable), as every later
    # state is the env's own
    env = pusht_env.PushTEnv(render_size=render_size or 8, reset_mode="exact", visual_obs=render_size is not None)
    agent = make_policy(policy, rng)
    obs, info = env.reset(options={"init_state": _random_initial_state(rng)})
    frames, states, actions = [], [], []
    for t in range(steps):
        state = info["state"]
        if render_size is not None:
            frames.append(obs["visual"])
        states.append(state)
        action_px = agent.act(state).astype(np.float32)
        actions.append(action_px)
        if t + 1 == steps or agent.done:
            break
        env_action = pixels_to_env_actions(torch.from_numpy(action_px)).numpy()
        obs, _, _, _, info = env.step(env_action)
    state_array = np.stack(states)
    episode = {
        "states": state_array[:, :5].astype(np.float32),
        "velocities": state_array[:, 5:7].astype(np.float32),
        "rel_actions": np.stack(actions),
        "reached_goal": np.bool_(agent.reached_goal),
    }
    if render_size is not None:
        episode["frames"] = np.stack(frames)
    return episode


def _run_job(job: _EpisodeJob) -> dict[str, np.ndarray]:
    """Generate one episode, write its frames into its split folder, return its arrays."""
    episode = generate_episode(job.index, job.seed, job.steps, job.render_size, job.policy)
    frames = episode.pop("frames")
    path = Path(job.split_dir) / "obses" / episode_frames_name(job.local_index, job.video)
    if job.video == "mp4":
        write_video(path, frames)
    else:
        write_bytes(path, _tensor_bytes(torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()))
    return episode


def block_moving_fraction(states: np.ndarray) -> float:
    """Fraction of transitions (t -> t+1) whose block position moves more than 0.5 px; states (..., T, >=4)."""
    moved = np.linalg.norm(np.diff(states[..., 2:4], axis=-2), axis=-1) > 0.5
    return float(moved.mean())


def _check_positive_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def generate_pusht_dataset(
    out_dir: Path,
    episodes: int,
    seed: int,
    steps: int | None,
    workers: int | None,
    progress: bool,
    render_size: int = pusht_env.DEFAULT_RENDER_SIZE,
    video: str = "mp4",
    policy: str = DEFAULT_POLICY,
) -> dict[str, Any]:
    """Generate `episodes` episodes of the scripted `policy` ("expert": demonstrations of at most
    `steps` frames, default 300; "pusher": roaming, exactly `steps`, default 100) into `out_dir` in
    the layout above: the last 10 % (at least one) form val/, the rest train/.

    Deterministic for a seed whatever the number of workers (each episode has its own random stream).
    `out_dir` must not exist or be empty; it appears complete or not at all.
    Returns statistics of the generated data: the comparison with the official normalisation
    statistics and the distribution of the validation split's 25-step goal segments among them.
    """
    policy_class(policy)  # an unknown name fails before any work
    episodes = _check_positive_int("episodes", episodes, 2)
    seed = _check_positive_int("seed", seed, 0)
    steps = default_steps(policy) if steps is None else _check_positive_int("steps", steps, 2)
    workers = (os.cpu_count() or 1) if workers is None else _check_positive_int("workers", workers, 0)
    render_size = pusht_env.check_render_size(render_size)
    if video not in VIDEO_FORMATS:
        raise ConfigError(f"video must be one of {', '.join(VIDEO_FORMATS)}, got {video!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"output directory {out_dir} already exists and is not empty; choose another --out or remove it")

    val_count = max(1, round(VAL_FRACTION * episodes))
    split_sizes = {"train": episodes - val_count, "val": val_count}
    started = time.perf_counter()
    with atomic_directory(out_dir, overwrite=True) as staging:
        jobs = []
        for split, first in (("train", 0), ("val", split_sizes["train"])):
            (staging / split / "obses").mkdir(parents=True)
            jobs += [
                _EpisodeJob(first + i, str(staging / split), i, seed, steps, render_size, video, policy)
                for i in range(split_sizes[split])
            ]
        records = _run_jobs(jobs, workers, progress)
        for split, first in (("train", 0), ("val", split_sizes["train"])):
            _write_split(staging / split, records[first : first + split_sizes[split]])

    return {
        "env": "pusht",
        "policy": policy,
        "episodes": episodes,
        "train_episodes": split_sizes["train"],
        "val_episodes": split_sizes["val"],
        "steps": steps,
        "seed": seed,
        "render_size": render_size,
        "video": video,
        **recorded_statistics(records, records[split_sizes["train"]:]),
        "seconds": time.perf_counter() - started,
    }


def recorded_statistics(records: Sequence[dict[str, np.ndarray]], val_records: Sequence[dict[str, np.ndarray]]) -> dict[str, Any]:
    """What a dataset's manifest keeps about its episodes: lengths, the expert's goal rate, the
    per-dimension comparison with the official statistics (all episodes), and the 25-step segments
    of the validation split (what evaluation goals are drawn from)."""
    lengths = np.array([len(r["states"]) for r in records])
    actions_px = np.concatenate([r["rel_actions"][:-1] for r in records])
    checks = compare_with_official(records)
    try:
        segments = segment_distribution(val_records)
    except ValueError:  # episodes too short for a segment
        segments = None
    return {
        "episode_length": {"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())},
        "reached_goal_fraction": float(np.mean([bool(r.get("reached_goal", False)) for r in records])),
        "block_moving_fraction": float(np.average([block_moving_fraction(r["states"]) for r in records], weights=np.maximum(lengths - 1, 1))),
        "action_mean_px": actions_px.mean(axis=0).tolist(),
        "action_std_px": actions_px.std(axis=0).tolist(),
        "official_comparison": [c.as_dict() for c in checks],
        "matches_official": all(c.ok for c in checks),
        "val_segments": segments,
    }


def _run_jobs(jobs: Sequence[_EpisodeJob], workers: int, progress: bool) -> list[dict[str, np.ndarray]]:
    from tqdm import tqdm

    with tqdm(total=len(jobs), desc="pusht episodes", unit="ep", disable=not progress) as bar:
        if workers <= 1:
            records = []
            for job in jobs:
                records.append(_run_job(job))
                bar.update()
            return records
        # spawn: pygame must not inherit a parent's SDL state through fork
        with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            records = []
            for record in pool.imap(_run_job, jobs, chunksize=1):
                records.append(record)
                bar.update()
            return records


def _padded(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Episodes of unequal length stacked (N, T_max, D), zero after each one's end (as upstream)."""
    out = np.zeros((len(arrays), max(len(a) for a in arrays), arrays[0].shape[1]), dtype=arrays[0].dtype)
    for i, array in enumerate(arrays):
        out[i, : len(array)] = array
    return out


def _write_split(split_dir: Path, records: Sequence[dict[str, np.ndarray]]) -> None:
    for name in ("states", "velocities", "rel_actions"):
        tensor = torch.from_numpy(_padded([r[name] for r in records]))
        write_bytes(split_dir / f"{name}.pth", _tensor_bytes(tensor))
    # a plain list of ints: what upstream's loader (pickle.load) expects
    write_bytes(split_dir / "seq_lengths.pkl", pickle.dumps([int(len(r["states"])) for r in records]))
