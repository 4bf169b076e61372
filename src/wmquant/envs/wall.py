"""DotWall: a Gaussian dot in a 65 x 65 frame, split by a vertical wall with a door (spec section 1).

Coordinates are pixels: `x` is the column, `y` the row (row 0 at the top). The state, the proprio and
the position of the dot are the same 2-vector `(x, y)`; an action `a` proposes the move
`p + 2 a`, which the collision rule of spec 1.6 may stop at a wall.

One vectorised implementation (`propose_and_collide`, `render_frames`) serves every caller: the
batched env (`WallBatchEnv`, n independent envs, each with its own layout), the gymnasium env
(`WallEnv`, the n = 1 case) and the data generator. Upstream bugs are fixed, not reproduced; each fix
is listed in `docs/differences.md` ("Wall").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import gymnasium
import numpy as np
from gymnasium import spaces

from ..errors import ConfigError
from .batch import BatchEnv, Obs

IMG_SIZE = 65
DOT_STD = 1.7
BORDER_WALL_LOC = 5
BORDER_LOW = float(BORDER_WALL_LOC - 1)  # the border lines are pixel rows/columns 4 and 60
BORDER_HIGH = float(IMG_SIZE - BORDER_WALL_LOC)
WALL_HALF_WIDTH = 6 // 2  # wall_width 6: columns wall_x - 3 .. wall_x + 3
DOOR_HALF_HEIGHT = 4  # door_space: rows door_y - 4 .. door_y + 4 are open
ACTION_SCALE = 2.0  # proposed position = position + 2 * action (hard-coded upstream)
HIT_OFFSET = 0.5  # where a blocked dot lands relative to the hit point
NUDGE = 0.3  # inward push after clamping onto a wall line
SUCCESS_DISTANCE = 4.5  # success when ||goal_xy - cur_xy|| < 4.5 px
DEFAULT_WALL_X = 32
DEFAULT_DOOR_Y = 30
# Clearance the init/goal sampler keeps from the wall faces (2 dot sigmas) and from the frame edge.
SAMPLE_PADDING = DOT_STD * 2
SAMPLE_BORDER_PADDING = BORDER_WALL_LOC - 1 + SAMPLE_PADDING
# Layouts whose wall band and door lie strictly inside the border lines: 8..56 and 9..55 (upstream's
# layout enumerations use 20..44 and 10..54). A door that reached a border line would open onto it,
# and the collision rule would clamp a dot that hits the border inside the doorway onto a wall face.
WALL_X_RANGE = (int(BORDER_LOW) + WALL_HALF_WIDTH + 1, int(BORDER_HIGH) - WALL_HALF_WIDTH - 1)
DOOR_Y_RANGE = (int(BORDER_LOW) + DOOR_HALF_HEIGHT + 1, int(BORDER_HIGH) - DOOR_HALF_HEIGHT - 1)
STATE_DIM = PROPRIO_DIM = ACTION_DIM = 2


@dataclass(frozen=True)
class WallLayout:
    """Wall centre column and door centre row, in pixels."""

    wall_x: int = DEFAULT_WALL_X
    door_y: int = DEFAULT_DOOR_Y

    def __post_init__(self) -> None:
        lo, hi = WALL_X_RANGE
        if not lo <= self.wall_x <= hi:
            raise ConfigError(f"wall x {self.wall_x} is outside the frame; valid: integers {lo}..{hi}")
        lo, hi = DOOR_Y_RANGE
        if not lo <= self.door_y <= hi:
            raise ConfigError(
                f"door y {self.door_y} is outside the frame; valid: integers {lo}..{hi}"
                " (the door's 9 rows must lie between the border lines)"
            )

    @classmethod
    def from_env_info(cls, env_info: Mapping[str, Any]) -> "WallLayout":
        """Read upstream's env_info: {"fix_wall_location": x, "fix_door_location": y}, where the values
        may be ints, numpy scalars or 1-element tensors (as the dataset returns them)."""
        missing = {"fix_wall_location", "fix_door_location"} - set(env_info)
        if missing:
            raise ConfigError(
                f"Wall env_info lacks {sorted(missing)}; expected keys 'fix_wall_location' and 'fix_door_location'"
            )
        return cls(
            wall_x=_integral(env_info["fix_wall_location"], "fix_wall_location"),
            door_y=_integral(env_info["fix_door_location"], "fix_door_location"),
        )

    def as_env_info(self) -> dict[str, int]:
        return {"fix_door_location": self.door_y, "fix_wall_location": self.wall_x}


def _integral(value: Any, name: str) -> int:
    flat = np.asarray(value.cpu() if hasattr(value, "cpu") else value, dtype=np.float64).reshape(-1)
    if flat.size != 1 or not np.isfinite(flat[0]) or flat[0] != np.round(flat[0]):
        raise ConfigError(f"{name} must be one integer pixel index, got {value!r}")
    return int(flat[0])


# --------------------------------------------------------------------------------------------------
# Dynamics


def _crossing_y(x1, y1, dx, dy, line_x):
    """y where the motion meets the vertical line x = line_x. Written with the segment parameter
    t = (line_x - x1) / dx (in [0, 1] whenever the line is crossed), so it stays finite for steep
    moves; a move with dx == 0 can only "cross" a line it lies on, which it meets at its start."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(dx != 0, y1 + dy * ((line_x - x1) / dx), y1)


def _crossing_x(x1, y1, dx, dy, line_y):
    """x where the motion meets the horizontal line y = line_y (see `_crossing_y`)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(dy != 0, x1 + dx * ((line_y - y1) / dy), x1)


def _crosses(start, end, line):
    """Upstream's crossing test `sign(start - line) * sign(end - line) <= 0.1`: the move crosses or
    touches the line (a start exactly on the line counts)."""
    return np.sign(start - line) * np.sign(end - line) <= 0.1


def resolve_collisions(
    start: np.ndarray, proposed: np.ndarray, wall_x: np.ndarray, door_y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Upstream's `check_wall_intersect` (spec 1.6) for n moves at once.

    start, proposed: (n, 2) float64 positions before and after the unobstructed move.
    wall_x, door_y: (n,) layout of each env.
    Returns (next positions (n, 2) float64, collided (n,) bool).
    """
    x1, y1 = start[:, 0], start[:, 1]
    x2, y2 = proposed[:, 0], proposed[:, 1]
    dx, dy = x2 - x1, y2 - y1
    wall_x = np.asarray(wall_x, dtype=np.float64)
    door_y = np.asarray(door_y, dtype=np.float64)
    face_left, face_right = wall_x - WALL_HALF_WIDTH, wall_x + WALL_HALF_WIDTH
    door_low, door_high = door_y - DOOR_HALF_HEIGHT, door_y + DOOR_HALF_HEIGHT

    # Step A: a move out of the door through its top or bottom edge (y = door_y +- 4) inside the
    # wall band stops on that edge. Upstream requires the start strictly inside (y1 < edge); a dot
    # resting exactly on the edge then walks into the wall, so the start may lie on the edge here.
    leaves_high = (dy > 0) & (y1 <= door_high) & (y2 > door_high)
    leaves_low = (dy < 0) & (y1 >= door_low) & (y2 < door_low)
    edge_y = np.where(leaves_high, door_high, door_low)
    edge_x = _crossing_x(x1, y1, dx, dy, edge_y)
    edge_hit = (leaves_high | leaves_low) & (face_left <= edge_x) & (edge_x <= face_right)
    edge_stop = np.stack([edge_x + HIT_OFFSET, edge_y + np.where(leaves_high, -HIT_OFFSET, HIT_OFFSET)], axis=1)

    # Step B: vertical candidates are the border and the wall face on the dot's side of the wall
    # centre; the face has the door hole. "left" is tested before "right".
    left_of_centre = wall_x > x1
    left_line = np.where(left_of_centre, BORDER_LOW, face_right)
    right_line = np.where(left_of_centre, face_left, BORDER_HIGH)
    left_has_door, right_has_door = ~left_of_centre, left_of_centre

    def blocked_at(line, has_door):
        y = _crossing_y(x1, y1, dx, dy, line)
        return _crosses(x1, x2, line) & (~has_door | (y < door_low) | (y > door_high)), y

    left_blocked, left_y = blocked_at(left_line, left_has_door)
    right_blocked, right_y = blocked_at(right_line, right_has_door)
    # Upstream never looks past the wall: a long move through the door could leave the frame (> ~31
    # px) or be clamped back to the start side (> ~20 px). Such a move is judged on the far side.
    passed_door = ~left_blocked & ~right_blocked & np.where(left_of_centre, x2 > face_right, x2 < face_left)
    far_line = np.where(left_of_centre, BORDER_HIGH, BORDER_LOW)
    far_blocked, far_y = blocked_at(far_line, np.zeros_like(left_of_centre))
    far_blocked &= passed_door

    vertical_hit = left_blocked | right_blocked | far_blocked
    vertical_x = np.where(left_blocked, left_line, np.where(right_blocked, right_line, far_line))
    vertical_y = np.where(left_blocked, left_y, np.where(right_blocked, right_y, far_y))

    # Horizontal candidates: the top border, then the bottom one (no holes).
    top_crossed = _crosses(y1, y2, BORDER_LOW)
    horizontal_hit = top_crossed | _crosses(y1, y2, BORDER_HIGH)
    horizontal_x = np.where(
        top_crossed, _crossing_x(x1, y1, dx, dy, BORDER_LOW), _crossing_x(x1, y1, dx, dy, BORDER_HIGH)
    )
    horizontal_y = np.where(top_crossed, BORDER_LOW, BORDER_HIGH)

    # The vertical hit wins only when strictly closer to the start (Euclidean).
    vertical_dist = np.sqrt((x1 - vertical_x) ** 2 + (y1 - vertical_y) ** 2)
    horizontal_dist = np.sqrt((x1 - horizontal_x) ** 2 + (y1 - horizontal_y) ** 2)
    use_vertical = vertical_hit & (~horizontal_hit | (vertical_dist < horizontal_dist))
    any_hit = vertical_hit | horizontal_hit

    # Offsets: back off 0.5 px across the line that was hit, +0.5 px along it (deterministic).
    stop_x = np.where(use_vertical, vertical_x + HIT_OFFSET * np.sign(x1 - vertical_x), horizontal_x + HIT_OFFSET)
    stop_y = np.where(use_vertical, vertical_y + HIT_OFFSET, horizontal_y + HIT_OFFSET * np.sign(y1 - horizontal_y))

    x_low = np.where(passed_door, np.where(left_of_centre, face_right, BORDER_LOW), left_line)
    x_high = np.where(passed_door, np.where(left_of_centre, BORDER_HIGH, face_left), right_line)
    stop_x = np.clip(stop_x, x_low, x_high)
    stop_y = np.clip(stop_y, BORDER_LOW, BORDER_HIGH)
    # Sequential like upstream: in a band narrower than 0.6 px the second nudge wins.
    stop_x = np.where(stop_x <= x_low, x_low + NUDGE, stop_x)
    stop_x = np.where(stop_x >= x_high, x_high - NUDGE, stop_x)
    stop_y = np.where(stop_y <= BORDER_LOW, BORDER_LOW + NUDGE, stop_y)
    stop_y = np.where(stop_y >= BORDER_HIGH, BORDER_HIGH - NUDGE, stop_y)
    stop = np.stack([stop_x, stop_y], axis=1)

    # Upstream returns the door-edge stop before looking at anything else, so a long move that hits
    # the wall face next to the door and only then crosses the door's edge would slip into the door
    # (or through it). The edge stop applies only when no wall face is hit first.
    edge_dist = np.sqrt((x1 - edge_x) ** 2 + (y1 - edge_y) ** 2)
    edge_first = edge_hit & ~(vertical_hit & (vertical_dist < edge_dist))

    next_positions = np.where(
        edge_first[:, None], edge_stop, np.where(any_hit[:, None], stop, proposed)
    )
    return next_positions, edge_first | any_hit


def propose_and_collide(
    positions: np.ndarray, actions: np.ndarray, wall_x: np.ndarray, door_y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One env step: positions (n, 2) and actions (n, 2) in env units -> (next (n, 2), collided (n,))."""
    positions = np.asarray(positions, dtype=np.float64)
    proposed = positions + np.asarray(actions, dtype=np.float64) * ACTION_SCALE
    return resolve_collisions(positions, proposed, wall_x, door_y)


# --------------------------------------------------------------------------------------------------
# Rendering


def wall_masks(wall_x: np.ndarray, door_y: np.ndarray) -> np.ndarray:
    """Black pixels of each layout: (n, 65, 65) bool, [row, column]. The wall band is 7 columns
    wide, the door 9 rows high, and the 1-pixel border lines at 4 and 60 cross the door rows too."""
    grid = np.arange(IMG_SIZE)
    wall_x = np.asarray(wall_x).reshape(-1, 1, 1)
    door_y = np.asarray(door_y).reshape(-1, 1, 1)
    columns, rows = grid[None, None, :], grid[None, :, None]
    in_band = np.abs(columns - wall_x) <= WALL_HALF_WIDTH
    in_door = np.abs(rows - door_y) <= DOOR_HALF_HEIGHT
    masks = in_band & ~in_door
    border = int(BORDER_LOW), int(BORDER_HIGH)
    masks[:, :, border] = True
    masks[:, border, :] = True
    return masks


def _normalised_profile(centres: np.ndarray) -> np.ndarray:
    """exp(-(i - c)^2 / (2 sigma^2)) / its maximum over i in 0..64, for each centre: (n, 65).
    Subtracting the minimum squared distance before exp is the division by the maximum, done so
    that the peak is exactly 1 and a far-away dot cannot underflow to 0/0."""
    sq = (np.arange(IMG_SIZE, dtype=np.float64)[None, :] - centres[:, None]) ** 2
    return np.exp(-(sq - sq.min(axis=1, keepdims=True)) / (2 * DOT_STD * DOT_STD))


def render_frames(positions: np.ndarray, masks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Frames for dots at `positions` (n, 2) over layouts `masks` (n, 65, 65): uint8 (n, 65, 65, 3).

    The Gaussian dot (sigma 1.7, peak 1) is separable, so it is the outer product of a row and a
    column profile. Intensity I = trunc(255 * D); off the walls the pixel is (255, 255 - I, 255 - I),
    on the walls (0, 0, 0): the dot is never drawn over a wall.
    """
    positions = np.asarray(positions, dtype=np.float64)
    # In-place steps on purpose: a second (n, 65, 65) float64 temporary costs more in page faults
    # than the arithmetic (5x slower for n = 50).
    dot = _normalised_profile(positions[:, 1])[:, :, None] * _normalised_profile(positions[:, 0])[:, None, :]
    dot *= 255.0
    green_blue = dot.astype(np.uint8)  # float -> uint8 truncates, as upstream
    np.subtract(np.uint8(255), green_blue, out=green_blue)
    open_pixels = ~masks
    green_blue *= open_pixels
    if out is None:
        out = np.empty((len(positions), IMG_SIZE, IMG_SIZE, 3), dtype=np.uint8)
    np.multiply(open_pixels, np.uint8(255), out=out[..., 0])
    out[..., 1] = green_blue
    out[..., 2] = green_blue
    return out


# --------------------------------------------------------------------------------------------------
# Init/goal sampling and success


def sample_init_goal(seed: int, wall_x: int) -> tuple[np.ndarray, np.ndarray]:
    """Upstream's `generate_random_state(seed)`: init and goal on opposite sides of the wall, drawn
    from `numpy.random.RandomState(seed)` in the order start_x, target_x, start_y, target_y, swap.
    Uses the current wall (upstream used the wall of construction time). Returns float64 (2,) each."""
    rs = np.random.RandomState(_seed(seed))
    start_x = rs.uniform(low=SAMPLE_BORDER_PADDING, high=(wall_x - WALL_HALF_WIDTH) - SAMPLE_PADDING)
    target_x = rs.uniform(low=(wall_x + WALL_HALF_WIDTH) + SAMPLE_PADDING, high=IMG_SIZE - 1 - SAMPLE_BORDER_PADDING)
    low_y, high_y = SAMPLE_BORDER_PADDING, IMG_SIZE - 1 - SAMPLE_BORDER_PADDING
    start_y = rs.uniform(low=low_y, high=high_y)
    target_y = rs.uniform(low=low_y, high=high_y)
    if rs.uniform(low=0, high=1) < 0.5:  # travel right-to-left half of the time
        start_x, target_x = target_x, start_x
    return np.array([start_x, start_y]), np.array([target_x, target_y])


def _seed(seed: Any) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    return int(seed)


def evaluate_states(goal_states: np.ndarray, cur_states: np.ndarray) -> dict[str, np.ndarray]:
    """Success when the (x, y) distance is below 4.5 px; `state_dist` is the full-state distance."""
    goal = np.asarray(goal_states, dtype=np.float64)
    cur = np.asarray(cur_states, dtype=np.float64)
    success = np.linalg.norm(goal[..., :2] - cur[..., :2], axis=-1) < SUCCESS_DISTANCE
    return {"success": success, "state_dist": np.linalg.norm(goal - cur, axis=-1)}


# --------------------------------------------------------------------------------------------------
# Environments


def _check_states(states: Any, rows: int) -> np.ndarray:
    states = np.asarray(states, dtype=np.float64)
    if states.shape != (rows, STATE_DIM):
        raise ConfigError(f"Wall states must have shape ({rows}, {STATE_DIM}), got {states.shape}")
    bad = ~np.all(np.isfinite(states) & (states >= 0) & (states <= IMG_SIZE - 1), axis=1)
    if bad.any():
        raise ConfigError(
            f"Wall states must be finite (x, y) pixels in [0, {IMG_SIZE - 1}], got {states[bad][0].tolist()}"
        )
    return states


def _check_actions(actions: Any, shape: tuple[int, ...]) -> np.ndarray:
    actions = np.asarray(actions, dtype=np.float64)
    if actions.shape != shape:
        raise ConfigError(f"Wall actions must have shape {shape}, got {actions.shape}")
    if not np.all(np.isfinite(actions)):
        raise ConfigError("Wall actions must be finite numbers; got NaN or inf")
    return actions


class WallBatchEnv(BatchEnv):
    """`num_envs` DotWall envs, each with its own layout and dot, stepped with numpy.

    Attributes: `positions` (n, 2) float64 dot positions; `wall_x`, `door_y` (n,) int layouts;
    `collided` (n,) bool, whether each env's last step was stopped by a wall.
    """

    state_dim = STATE_DIM
    proprio_dim = PROPRIO_DIM
    action_dim = ACTION_DIM

    def __init__(self, num_envs: int, wall_x: int = DEFAULT_WALL_X, door_y: int = DEFAULT_DOOR_Y):
        if int(num_envs) <= 0:
            raise ConfigError(f"num_envs must be a positive integer, got {num_envs!r}")
        layout = WallLayout(int(wall_x), int(door_y))
        self.num_envs = int(num_envs)
        self.wall_x = np.full(self.num_envs, layout.wall_x, dtype=np.int64)
        self.door_y = np.full(self.num_envs, layout.door_y, dtype=np.int64)
        self._masks = wall_masks(self.wall_x, self.door_y)
        self.positions = np.full((self.num_envs, STATE_DIM), np.nan)
        self.collided = np.zeros(self.num_envs, dtype=bool)

    def _rows(self, indices: Sequence[int] | None) -> np.ndarray:
        if indices is None:
            return np.arange(self.num_envs)
        rows = np.asarray(indices, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_envs):
            raise ConfigError(f"env indices must lie in 0..{self.num_envs - 1}, got {rows.tolist()}")
        return rows

    def layouts(self) -> list[WallLayout]:
        return [WallLayout(int(w), int(d)) for w, d in zip(self.wall_x, self.door_y)]

    def update_env(self, env_infos: Sequence[Mapping[str, Any]], indices: Sequence[int] | None = None) -> None:
        rows = self._rows(indices)
        if len(env_infos) != len(rows):
            raise ConfigError(f"got {len(env_infos)} env_infos for {len(rows)} envs")
        layouts = [WallLayout.from_env_info(info) for info in env_infos]
        self.wall_x[rows] = [layout.wall_x for layout in layouts]
        self.door_y[rows] = [layout.door_y for layout in layouts]
        self._masks[rows] = wall_masks(self.wall_x[rows], self.door_y[rows])

    def _observe(self, rows: np.ndarray) -> Obs:
        positions = self.positions[rows]
        return {
            "visual": render_frames(positions, self._masks[rows]),
            "proprio": positions.astype(np.float32),
        }

    def _require_reset(self, rows: np.ndarray) -> None:
        if np.isnan(self.positions[rows]).any():
            raise RuntimeError("step() before reset_to(): the Wall env has no dot position yet")

    def reset_to(self, states: np.ndarray, indices: Sequence[int] | None = None) -> tuple[Obs, np.ndarray]:
        rows = self._rows(indices)
        self.positions[rows] = _check_states(states, len(rows))
        self.collided[rows] = False
        return self._observe(rows), self.positions[rows].copy()

    def step(self, actions: np.ndarray, indices: Sequence[int] | None = None) -> tuple[Obs, np.ndarray]:
        rows = self._rows(indices)
        self._require_reset(rows)
        actions = _check_actions(actions, (len(rows), ACTION_DIM))
        next_positions, collided = propose_and_collide(
            self.positions[rows], actions, self.wall_x[rows], self.door_y[rows]
        )
        self.positions[rows] = next_positions
        self.collided[rows] = collided
        return self._observe(rows), next_positions

    def rollout(
        self, init_states: np.ndarray, actions: np.ndarray, indices: Sequence[int] | None = None
    ) -> tuple[Obs, np.ndarray]:
        """Same result as `reset_to` + `step` per action, with the physics run first and every frame
        rendered straight into one preallocated array."""
        rows = self._rows(indices)
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 3:
            raise ConfigError(f"rollout actions must have shape (n, T, 2), got {actions.shape}")
        actions = _check_actions(actions, (len(rows), actions.shape[1], ACTION_DIM))
        horizon = actions.shape[1]
        states = np.empty((len(rows), horizon + 1, STATE_DIM))
        states[:, 0] = _check_states(init_states, len(rows))
        collided = np.zeros(len(rows), dtype=bool)
        wall_x, door_y = self.wall_x[rows], self.door_y[rows]
        for t in range(horizon):
            states[:, t + 1], collided = propose_and_collide(states[:, t], actions[:, t], wall_x, door_y)
        visual = np.empty((len(rows), horizon + 1, IMG_SIZE, IMG_SIZE, 3), dtype=np.uint8)
        masks = self._masks[rows]
        for t in range(horizon + 1):
            render_frames(states[:, t], masks, out=visual[:, t])
        self.positions[rows] = states[:, -1]
        self.collided[rows] = collided
        return {"visual": visual, "proprio": states.astype(np.float32)}, states

    def eval_state(self, goal_states: np.ndarray, cur_states: np.ndarray) -> dict[str, np.ndarray]:
        return evaluate_states(goal_states, cur_states)

    def sample_random_init_goal_states(self, seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Row i from `seeds[i]` with env i's wall; one seed per env."""
        if len(seeds) != self.num_envs:
            raise ConfigError(f"need one seed per env ({self.num_envs}), got {len(seeds)}")
        pairs = [sample_init_goal(seed, int(wall_x)) for seed, wall_x in zip(seeds, self.wall_x)]
        return np.stack([init for init, _ in pairs]), np.stack([goal for _, goal in pairs])


class WallEnv(gymnasium.Env):
    """One DotWall env with gymnasium's API and DINO-WM's planning API (spec 1.7).

    Observations: {"visual": uint8 (65, 65, 3), "proprio": float32 (2,)}; states float64 (2,).
    Frames stay at the native 65 x 65; resizing to a model's resolution is preprocessing
    (`wmquant.data.transforms.to_model_input`).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self, wall_x: int = DEFAULT_WALL_X, door_y: int = DEFAULT_DOOR_Y, render_mode: str | None = None
    ):
        if render_mode not in (None, "rgb_array"):
            raise ConfigError(f"render_mode {render_mode!r} is not supported; valid: None, 'rgb_array'")
        self.render_mode = render_mode
        self._batch = WallBatchEnv(1, wall_x=wall_x, door_y=door_y)
        self.observation_space = spaces.Dict(
            {
                "visual": spaces.Box(0, 255, (IMG_SIZE, IMG_SIZE, 3), dtype=np.uint8),
                "proprio": spaces.Box(0.0, IMG_SIZE - 1.0, (PROPRIO_DIM,), dtype=np.float32),
            }
        )
        self.action_space = spaces.Box(-np.inf, np.inf, (ACTION_DIM,), dtype=np.float32)
        self._last_visual: np.ndarray | None = None

    @property
    def layout(self) -> WallLayout:
        return self._batch.layouts()[0]

    @property
    def state(self) -> np.ndarray:
        return self._batch.positions[0].copy()

    @staticmethod
    def _single(obs: Obs) -> Obs:
        return {key: value[0] for key, value in obs.items()}

    def _keep(self, obs: Obs) -> Obs:
        self._last_visual = obs["visual"]
        return obs

    # gymnasium API ---------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """options: {"env_info": layout, "init_state": (2,)}. Without an init state the dot is put at
        the init state of `sample_random_init_goal_states(seed)` (a seed drawn from the env's RNG
        when none is given) and the matching goal is returned as info["goal_state"]."""
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"init_state", "env_info"}
        if unknown:
            raise ConfigError(f"unknown reset options {sorted(unknown)}; valid: 'init_state', 'env_info'")
        if options.get("env_info") is not None:
            self.update_env(options["env_info"])
        info: dict[str, Any] = {}
        init_state = options.get("init_state")
        if init_state is None:
            sample_seed = seed if seed is not None else int(self.np_random.integers(2**32))
            init_state, info["goal_state"] = self.sample_random_init_goal_states(sample_seed)
        obs, state = self._batch.reset_to(np.asarray(init_state, dtype=np.float64).reshape(1, STATE_DIM))
        info["state"] = state[0]
        return self._keep(self._single(obs)), info

    def step(self, action):
        obs, state = self._batch.step(np.asarray(action, dtype=np.float64).reshape(1, ACTION_DIM))
        info = {"state": state[0], "pos_agent": state[0].copy()}
        return self._keep(self._single(obs)), 0.0, False, False, info

    def render(self) -> np.ndarray | None:
        return None if self.render_mode is None else self._last_visual

    # DINO-WM planning API ----------------------------------------------------------------------

    def prepare(self, seed: int, init_state: np.ndarray) -> tuple[Obs, np.ndarray]:
        """Reset to `init_state`; returns (obs, state (2,) float64). Upstream's seed only reseeds an
        RNG the env never uses; here it reseeds gymnasium's `np_random`."""
        obs, info = self.reset(seed=int(seed), options={"init_state": init_state})
        return obs, info["state"]

    def step_multiple(self, actions: np.ndarray):
        """Apply actions (T, 2) in turn. Returns (obses {"visual" (T, 65, 65, 3), "proprio" (T, 2)},
        rewards (T,), dones (T,), infos {"state" (T, 2), "pos_agent" (T, 2)}), stacked like upstream."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != ACTION_DIM:
            raise ConfigError(f"step_multiple actions must have shape (T, 2), got {actions.shape}")
        init = self._batch.positions.copy()
        self._batch._require_reset(np.arange(1))
        obses, states = self._batch.rollout(init, actions[None])
        visual = obses["visual"][0, 1:]
        if len(visual):
            self._last_visual = visual[-1]
        horizon = len(actions)
        return (
            {"visual": visual, "proprio": obses["proprio"][0, 1:]},
            np.zeros(horizon),
            np.zeros(horizon, dtype=bool),
            {"state": states[0, 1:], "pos_agent": states[0, 1:].copy()},
        )

    def rollout(self, seed: int, init_state: np.ndarray, actions: np.ndarray) -> tuple[Obs, np.ndarray]:
        """prepare + step_multiple: observations with T + 1 frames (initial first) and states (T + 1, 2)."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != ACTION_DIM:
            raise ConfigError(f"rollout actions must have shape (T, 2), got {actions.shape}")
        self.prepare(seed, init_state)
        obses, states = self._batch.rollout(self._batch.positions.copy(), actions[None])
        self._last_visual = obses["visual"][0, -1]
        return {key: value[0] for key, value in obses.items()}, states[0]

    def eval_state(self, goal_state: np.ndarray, cur_state: np.ndarray) -> dict[str, Any]:
        result = evaluate_states(goal_state, cur_state)
        return {"success": bool(result["success"]), "state_dist": float(result["state_dist"])}

    def sample_random_init_goal_states(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return sample_init_goal(seed, self.layout.wall_x)

    def update_env(self, env_info: Mapping[str, Any]) -> None:
        """Switch to the layout of `env_info` ({"fix_wall_location", "fix_door_location"}). Unlike
        upstream it consumes no draw of Python's global `random`."""
        self._batch.update_env([env_info])
