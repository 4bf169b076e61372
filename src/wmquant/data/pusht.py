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

import dataclasses
import io
import math
import multiprocessing
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..envs import pusht as pusht_env
from ..envs.pusht_render import WINDOW_SIZE
from ..errors import ConfigError, DatasetError
from ..io import atomic_directory, atomic_path, write_bytes
from .base import Episode, Normalization, TrajectoryDataset

GENERATOR_VERSION = 1  # bump when the scripted policy or the written layout changes
SPLITS = ("train", "val")
VIDEO_FORMATS = ("mp4", "pth")
PIXELS_PER_ACTION_UNIT = pusht_env.ACTION_SCALE
DEFAULT_STEPS = 100
VAL_FRACTION = 0.1

# Fixed statistics of `pusht_noise` that DINO-WM normalises with (spec 2.10); action statistics are
# for env units (px / 100).
NORMALIZATION = Normalization(
    action_mean=torch.tensor([-0.0087, 0.0068]),
    action_std=torch.tensor([0.2019, 0.2002]),
    proprio_mean=torch.tensor([236.6155, 264.5674, -2.93032027, 2.54307914]),
    proprio_std=torch.tensor([101.1202, 87.0112, 74.84556075, 74.14009094]),
    state_mean=torch.tensor([236.6155, 264.5674, 255.1307, 266.3721, 1.9584, -2.93032027, 2.54307914]),
    state_std=torch.tensor([101.1202, 87.0112, 52.7054, 57.4971, 1.7556, 74.84556075, 74.14009094]),
)


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
# The scripted exploration policy


@dataclass(frozen=True)
class PusherSettings:
    """Knobs of the scripted pusher; distances in px, an action is a PD-target offset in px."""

    approach_max_px: float = 50.0  # largest offset while travelling to a contact point
    approach_gain: float = 1.5  # offset = gain x remaining distance near the target (> 1: arrive sooner)
    push_speed_px: tuple[float, float] = (12.0, 32.0)  # offset per step while pushing, uniform range
    push_steps: tuple[int, int] = (8, 25)  # steps per push, uniform range (inclusive)
    push_heading_noise_rad: float = 0.35  # std of the push direction around the edge normal
    standoff_px: float = 4.0  # gap between the agent's rim and the edge before a push
    arrival_px: float = 6.0  # the agent has reached the stand-off point within this distance
    waypoint_tolerance_px: float = 15.0  # ... and a detour waypoint within this one
    push_candidates: int = 24  # candidate pushes drawn per decision
    nearby_contact_probability: float = 0.7  # a candidate is on the outline next to the agent
    travel_preference_px: float = 30.0  # candidates are weighted by exp(-travel / this)
    central_half_width_px: float = 100.0  # pushes ending outside this square about the centre cost extra
    lateral_gain: float = 0.5  # steering onto the contact point's line while pushing
    approach_timeout_steps: int = 25
    random_move_probability: float = 0.05  # per decision: wander instead of pushing
    random_move_steps: tuple[int, int] = (3, 8)
    random_move_std_px: float = 20.0
    ou_theta: float = 0.3  # Ornstein-Uhlenbeck noise added to every action
    ou_sigma_px: float = 4.0
    arena_margin_px: float = 25.0  # PD targets stay this far inside the 512 px arena (walls at 5/506)
    block_wall_clearance_px: float = 12.0  # pushes must keep the block this far from the walls


@dataclass(frozen=True)
class _Push:
    """One planned push, in the block's frame: agent goes through `waypoints` (world px, last = the
    stand-off point behind `contact_local`), then pushes `steps` steps along `direction_local`."""

    contact_local: np.ndarray
    normal_local: np.ndarray  # outward normal of the pushed edge
    direction_local: np.ndarray
    speed: float  # px of PD-target offset per step
    steps: int
    waypoints: tuple[np.ndarray, ...] = ()


class ScriptedPusher:
    """Picks a point on the block's outline and a push direction near the inward edge normal, moves
    the agent to a stand-off point behind it, pushes for a while, and repeats; sometimes wanders
    instead. Every action carries Ornstein-Uhlenbeck noise. Deterministic given its generator.
    """

    def __init__(self, rng: np.random.Generator, shape: pusht_env.BlockShape = pusht_env.TEE, settings: PusherSettings = PusherSettings()):
        self.rng = rng
        self.shape = shape
        self.settings = settings
        self._outline = np.asarray(shape.outline, dtype=np.float64)
        self._edges = np.roll(self._outline, -1, axis=0) - self._outline
        self._edge_lengths = np.linalg.norm(self._edges, axis=1)
        # (ey, -ex) is the outward normal of a polygon with positive shoelace area; flip otherwise
        signed_area = np.sum(self._outline[:, 0] * np.roll(self._outline[:, 1], -1) - np.roll(self._outline[:, 0], -1) * self._outline[:, 1])
        self._normals = np.sign(signed_area) * np.stack([self._edges[:, 1], -self._edges[:, 0]], axis=1) / self._edge_lengths[:, None]
        # a circle about the centre of gravity this large never touches the block, whatever its angle
        cog_to_vertex = np.linalg.norm(self._outline - np.asarray(shape.center_of_gravity), axis=1).max()
        self._detour_radius = cog_to_vertex + pusht_env.AGENT_RADIUS + 5.0
        self._noise = np.zeros(2)
        self._latest_state: list[np.ndarray] = [np.zeros(pusht_env.STATE_DIM)]  # read by the running plan
        self._plan: Iterator[np.ndarray] | None = None

    # ---- geometry ------------------------------------------------------------------------------

    @staticmethod
    def _rotation(state: np.ndarray) -> np.ndarray:
        """Block-local -> world rotation (2, 2); world = block position + rotation @ local."""
        c, s = math.cos(state[4]), math.sin(state[4])
        return np.array([[c, -s], [s, c]])

    def _outline_world(self, state: np.ndarray) -> np.ndarray:
        """The block outline in world px (K, 2)."""
        return self._outline @ self._rotation(state).T + state[2:4]

    def _block_center(self, state: np.ndarray) -> np.ndarray:
        return state[2:4] + self._rotation(state) @ np.asarray(self.shape.center_of_gravity)

    def _nearest_outline_point(self, point_local: np.ndarray) -> tuple[int, float]:
        """(edge index, fraction along it) of the outline point nearest to a block-local point."""
        along = np.clip(np.einsum("kd,kd->k", point_local - self._outline, self._edges) / self._edge_lengths**2, 0.0, 1.0)
        nearest = self._outline + along[:, None] * self._edges
        edge = int(np.argmin(np.linalg.norm(nearest - point_local, axis=1)))
        return edge, float(along[edge])

    @staticmethod
    def _wall_clearance(outline: np.ndarray) -> float:
        """Smallest distance (px) from a world outline (K, 2) to the inner faces of the walls."""
        inner_low = pusht_env.WALL_LOW + pusht_env.WALL_RADIUS
        inner_high = pusht_env.WALL_HIGH - pusht_env.WALL_RADIUS
        return float(min((outline - inner_low).min(), (inner_high - outline).min()))

    @staticmethod
    def _distance_to_outline(points: np.ndarray, outline: np.ndarray) -> np.ndarray:
        """Distance (M,) of points (M, 2) to a polygon's boundary; 0 inside it."""
        a, b = outline, np.roll(outline, -1, axis=0)
        ab = b - a
        t = np.clip(np.einsum("mkd,kd->mk", points[:, None] - a, ab) / np.einsum("kd,kd->k", ab, ab), 0.0, 1.0)
        nearest = a + t[..., None] * ab
        distance = np.linalg.norm(points[:, None] - nearest, axis=-1).min(axis=1)
        # even-odd rule for inside
        y, x = points[:, 1:2], points[:, 0:1]
        crosses = ((a[:, 1] > y) != (b[:, 1] > y)) & (x < a[:, 0] + (y - a[:, 1]) * ab[:, 0] / np.where(ab[:, 1] == 0, 1, ab[:, 1]))
        inside = crosses.sum(axis=1) % 2 == 1
        return np.where(inside, 0.0, distance)

    # ---- plans ---------------------------------------------------------------------------------

    def _clear(self, starts: np.ndarray, ends: np.ndarray, outline: np.ndarray) -> np.ndarray:
        """Whether the agent can move straight from each start (M, 2) to each end (M, 2) without
        touching the block (the start itself may touch it: the agent may just have pushed)."""
        fractions = np.linspace(0.0, 1.0, 16)[1:]
        points = starts[:, None] + fractions[None, :, None] * (ends - starts)[:, None]
        distance = self._distance_to_outline(points.reshape(-1, 2), outline).reshape(len(starts), -1)
        return distance.min(axis=1) >= pusht_env.AGENT_RADIUS - 1.0

    def _route(self, state: np.ndarray, outline: np.ndarray, goal: np.ndarray, away: np.ndarray) -> list[np.ndarray] | None:
        """Waypoints from the agent to `goal` (a stand-off point; `away` is the pushed edge's world
        normal) that keep the agent off the block and inside the arena: straight if clear, else the
        shortest clear route through one via point (out along the normal, or on a circle about the
        block's centre that clears any pose of it), else around that circle. None if there is none."""
        agent = state[:2]
        if self._clear(agent[None], goal[None], outline)[0]:
            return [goal]
        center = self._block_center(state)
        angles = np.linspace(0.0, 2 * math.pi, 12, endpoint=False)
        vias = np.concatenate(
            [
                goal + np.array([[25.0], [50.0], [80.0]]) * away,
                center + self._detour_radius * np.stack([np.cos(angles), np.sin(angles)], axis=1),
            ]
        )
        lo, hi = self.settings.arena_margin_px, WINDOW_SIZE - self.settings.arena_margin_px
        vias = vias[((lo <= vias) & (vias <= hi)).all(axis=1)]
        count = len(vias)
        clear = self._clear(
            np.concatenate([np.repeat(agent[None], count, axis=0), vias]),
            np.concatenate([vias, np.repeat(goal[None], count, axis=0)]),
            outline,
        )
        usable = clear[:count] & clear[count:]
        if usable.any():
            length = np.linalg.norm(vias - agent, axis=1) + np.linalg.norm(goal - vias, axis=1)
            best = np.flatnonzero(usable)[np.argmin(length[usable])]
            return [vias[best], goal]
        return self._route_around(state, goal)

    def _route_around(self, state: np.ndarray, goal: np.ndarray) -> list[np.ndarray] | None:
        """Waypoints every 45 degrees along the block-clearing circle from the agent's side of the
        block to the goal's, the shorter way round that stays inside the arena; None if neither does."""
        center = self._block_center(state)
        start_angle = math.atan2(*(state[:2] - center)[::-1])
        short_turn = (math.atan2(*(goal - center)[::-1]) - start_angle + math.pi) % (2 * math.pi) - math.pi
        lo, hi = self.settings.arena_margin_px, WINDOW_SIZE - self.settings.arena_margin_px
        for turn in (short_turn, short_turn - math.copysign(2 * math.pi, short_turn)):
            count = max(1, math.ceil(abs(turn) / (math.pi / 4)))
            angles = start_angle + turn * np.arange(count + 1) / count
            circle = center + self._detour_radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
            if ((lo <= circle) & (circle <= hi)).all():
                return [*circle, goal]
        return None

    def _choose_push(self, state: np.ndarray) -> _Push | None:
        """A push on a random outline point, preferring those the agent reaches quickly; None if no
        candidate keeps agent and block inside the arena."""
        settings = self.settings
        outline = self._outline_world(state)
        rotation = self._rotation(state)
        lo, hi = settings.arena_margin_px, WINDOW_SIZE - settings.arena_margin_px
        center = self._block_center(state)
        arena_center = np.full(2, WINDOW_SIZE / 2)
        candidates = []
        agent_local = rotation.T @ (state[:2] - state[2:4])
        nearest_edge, nearest_along = self._nearest_outline_point(agent_local)
        for _ in range(settings.push_candidates):
            if self.rng.uniform() < settings.nearby_contact_probability:
                # keep pushing near where the agent already is: no travel
                edge = nearest_edge
                along = np.clip(nearest_along + self.rng.normal(0.0, 0.15), 0.1, 0.9)
            else:
                edge = self.rng.choice(len(self._edge_lengths), p=self._edge_lengths / self._edge_lengths.sum())
                along = self.rng.uniform(0.1, 0.9)
            contact = self._outline[edge] + along * self._edges[edge]
            normal = self._normals[edge]
            heading = math.atan2(-normal[1], -normal[0]) + self.rng.normal(0.0, settings.push_heading_noise_rad)
            push = _Push(
                contact_local=contact,
                normal_local=normal,
                direction_local=np.array([math.cos(heading), math.sin(heading)]),
                speed=self.rng.uniform(*settings.push_speed_px),
                steps=int(self.rng.integers(settings.push_steps[0], settings.push_steps[1] + 1)),
            )
            standoff = state[2:4] + rotation @ (contact + normal * (pusht_env.AGENT_RADIUS + settings.standoff_px))
            if not ((lo <= standoff) & (standoff <= hi)).all():
                continue
            # a pushed block travels at most ~0.4 x the offset per step (steady state of the PD loop);
            # it must end clear of the walls, or at least no closer to them than now (else the agent
            # could jam it into a wall)
            travel_vector = rotation @ push.direction_local * 0.4 * push.speed * push.steps
            end_clearance = self._wall_clearance(outline + travel_vector)
            if end_clearance < settings.block_wall_clearance_px and end_clearance < self._wall_clearance(outline):
                continue
            block_end = center + travel_vector
            if self._distance_to_outline(standoff[None], outline)[0] < pusht_env.AGENT_RADIUS:
                continue  # the stand-off point touches another edge (inside a concave corner)
            waypoints = self._route(state, outline, standoff, rotation @ normal)
            if waypoints is None:
                continue
            travel = np.sum(np.linalg.norm(np.diff(np.stack([state[:2], *waypoints]), axis=0), axis=1))
            # pushes that end far off-centre leave the next push little room: count that as travel
            off_centre = max(0.0, np.abs(block_end - arena_center).max() - settings.central_half_width_px)
            candidates.append((travel + off_centre, waypoints, push))
        if not candidates:
            return None
        cost = np.array([c[0] for c in candidates])
        weights = np.exp(-(cost - cost.min()) / settings.travel_preference_px)
        _, waypoints, push = candidates[self.rng.choice(len(candidates), p=weights / weights.sum())]
        return dataclasses.replace(push, waypoints=tuple(waypoints))

    def _approach(self, state_ref: list[np.ndarray], target: np.ndarray, tolerance: float) -> Iterator[np.ndarray]:
        for _ in range(self.settings.approach_timeout_steps):
            offset = target - state_ref[0][:2]
            distance = np.linalg.norm(offset)
            if distance < tolerance:
                return
            yield offset * min(self.settings.approach_gain, self.settings.approach_max_px / distance)

    def _push(self, state_ref: list[np.ndarray], push: _Push) -> Iterator[np.ndarray]:
        """Advance along the push direction (fixed in the block's frame, so it turns with the block)
        while steering sideways onto the contact point's line; stop early once the block has not
        moved for three steps (the agent slid off it)."""
        positions = [state_ref[0][2:4].copy()]
        for step in range(push.steps):
            if step >= 4 and np.linalg.norm(positions[-1] - positions[-4]) < 0.5:
                return
            state = state_ref[0]
            rotation = self._rotation(state)
            direction = rotation @ push.direction_local
            on_line = state[2:4] + rotation @ (push.contact_local + push.normal_local * pusht_env.AGENT_RADIUS)
            to_line = on_line - state[:2]
            lateral = to_line - direction * np.dot(to_line, direction)
            yield direction * push.speed + self.settings.lateral_gain * lateral
            positions.append(state_ref[0][2:4].copy())

    def _wander(self) -> Iterator[np.ndarray]:
        steps = int(self.rng.integers(self.settings.random_move_steps[0], self.settings.random_move_steps[1] + 1))
        for _ in range(steps):
            yield self.rng.normal(0.0, self.settings.random_move_std_px, 2)

    def _behaviour(self, state_ref: list[np.ndarray]) -> Iterator[np.ndarray]:
        """Endless stream of noiseless actions (px); `state_ref[0]` is the latest state."""
        while True:
            push = None if self.rng.uniform() < self.settings.random_move_probability else self._choose_push(state_ref[0])
            if push is None:
                yield from self._wander()
                continue
            for waypoint in push.waypoints[:-1]:
                yield from self._approach(state_ref, waypoint, self.settings.waypoint_tolerance_px)
            yield from self._approach(state_ref, push.waypoints[-1], self.settings.arrival_px)
            yield from self._push(state_ref, push)

    def act(self, state: np.ndarray) -> np.ndarray:
        """The next action (2,) in px for the current state (7,)."""
        self._latest_state[0] = state
        if self._plan is None:
            self._plan = self._behaviour(self._latest_state)
        action = next(self._plan)
        settings = self.settings
        self._noise += -settings.ou_theta * self._noise + self.rng.normal(0.0, settings.ou_sigma_px, 2)
        action = action + self._noise
        # keep the PD target inside the arena: the kinematic agent would pass through the walls
        lo, hi = settings.arena_margin_px, WINDOW_SIZE - settings.arena_margin_px
        return np.clip(state[:2] + action, lo, hi) - state[:2]


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


def _random_initial_state(rng: np.random.Generator) -> np.ndarray:
    """Spec 2.8's ranges with a uniform angle; float32-representable so that the stored (float32)
    initial state is the exact one the episode started from."""
    agent = rng.integers(50, 450, 2)
    block = rng.integers(100, 400, 2)
    angle = rng.uniform(0.0, 2 * math.pi)
    return np.array([*agent, *block, angle, 0.0, 0.0], dtype=np.float32).astype(np.float64)


def generate_episode(index: int, seed: int, steps: int, render_size: int) -> dict[str, np.ndarray]:
    """One scripted episode of `steps` frames (episode `index` of a dataset with this `seed`).

    Returns frames uint8 (T, R, R, 3), states float32 (T, 5), velocities float32 (T, 2), rel_actions
    float32 (T, 2) in px. Action t is taken after frame t; the last one's outcome is not recorded.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    env = pusht_env.PushTEnv(render_size=render_size)
    policy = ScriptedPusher(rng)
    obs, info = env.reset(options={"init_state": _random_initial_state(rng)})
    frames, states, actions = [], [], []
    for t in range(steps):
        state = info["state"]
        frames.append(obs["visual"])
        states.append(state)
        action_px = policy.act(state).astype(np.float32)
        actions.append(action_px)
        if t + 1 < steps:
            env_action = pixels_to_env_actions(torch.from_numpy(action_px)).numpy()
            obs, _, _, _, info = env.step(env_action)
    state_array = np.stack(states)
    return {
        "frames": np.stack(frames),
        "states": state_array[:, :5].astype(np.float32),
        "velocities": state_array[:, 5:7].astype(np.float32),
        "rel_actions": np.stack(actions),
    }


def _run_job(job: _EpisodeJob) -> dict[str, np.ndarray]:
    """Generate one episode, write its frames into its split folder, return its arrays."""
    episode = generate_episode(job.index, job.seed, job.steps, job.render_size)
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
) -> dict[str, Any]:
    """Generate `episodes` scripted episodes of `steps` frames (default 100) into `out_dir` in the
    layout above: the last 10 % (at least one) form val/, the rest train/.

    Deterministic for a seed whatever the number of workers (each episode has its own random stream).
    `out_dir` must not exist or be empty; it appears complete or not at all.
    Returns statistics of the generated data.
    """
    episodes = _check_positive_int("episodes", episodes, 2)
    seed = _check_positive_int("seed", seed, 0)
    steps = DEFAULT_STEPS if steps is None else _check_positive_int("steps", steps, 2)
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
                _EpisodeJob(first + i, str(staging / split), i, seed, steps, render_size, video)
                for i in range(split_sizes[split])
            ]
        records = _run_jobs(jobs, workers, progress)
        for split, first in (("train", 0), ("val", split_sizes["train"])):
            _write_split(staging / split, records[first : first + split_sizes[split]])

    states = np.stack([r["states"] for r in records])
    actions_px = np.concatenate([r["rel_actions"][:-1] for r in records])
    return {
        "env": "pusht",
        "episodes": episodes,
        "train_episodes": split_sizes["train"],
        "val_episodes": split_sizes["val"],
        "steps": steps,
        "seed": seed,
        "render_size": render_size,
        "video": video,
        "block_moving_fraction": block_moving_fraction(states),
        "action_mean_px": actions_px.mean(axis=0).tolist(),
        "action_std_px": actions_px.std(axis=0).tolist(),
        "seconds": time.perf_counter() - started,
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


def _write_split(split_dir: Path, records: Sequence[dict[str, np.ndarray]]) -> None:
    for name in ("states", "velocities", "rel_actions"):
        tensor = torch.from_numpy(np.stack([r[name] for r in records]))
        write_bytes(split_dir / f"{name}.pth", _tensor_bytes(tensor))
    # a plain list of ints: what upstream's loader (pickle.load) expects
    write_bytes(split_dir / "seq_lengths.pkl", pickle.dumps([int(len(r["states"])) for r in records]))
