"""PushT: a disc pushes a T-shaped block to a goal pose (DINO-WM's `pusht`, spec section 2).

Physics is pymunk (2-D rigid bodies in a 512x512 px world, y down). The agent is a kinematic disc
driven by a PD controller towards `agent_position + 100 * action`, so an action of 0.01 is a 1 px
offset. The block is a dynamic T with upstream's physical constants, including two that are bugs in
upstream's geometry code but are properties of the physics that generated the `pusht_noise` data and
trained the released models, so they are kept: moment of inertia 3000 (twice the crossbar's) and
centre of gravity (0, 45) (the unweighted mean of the two part centroids). Contacts are
frictionless and the space has damping 0, which wipes the block's velocity at every sub-step
(quasi-static pushing).

State (float64, 7): [agent_x, agent_y, block_x, block_y, block_angle in [0, 2pi), agent_vx, agent_vy]
Proprio (float32, 4): [agent_x, agent_y, agent_vx, agent_vy]
Observation: {"visual": uint8 (R, R, 3), "proprio": float32 (4,)}, R = `render_size` (224 default).

Reset-to-state ends with upstream's one 10 ms physics step by default (`reset_mode="upstream"`: an
agent with velocity v starts v x 0.01 px further on); `reset_mode="exact"` places the bodies at the
requested state and nothing else. Differences from upstream (see docs/differences.md): the random
sampler's angle is wrapped into [0, 2pi), and the angle difference in `eval_state` is wrapped
correctly for any pair of angles.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import os
import traceback
from dataclasses import dataclass
from typing import Any, Sequence

import gymnasium
import numpy as np
import pymunk
from gymnasium import spaces

from ..errors import ConfigError
from . import pusht_render
from .batch import BatchEnv, Obs
from .pusht_render import Point, Scene, Segment

SIM_HZ = 100
CONTROL_HZ = 10
SUBSTEPS = SIM_HZ // CONTROL_HZ
K_P = 100.0
K_V = 20.0
ACTION_SCALE = 100.0  # px of PD-target offset per unit of action

AGENT_RADIUS = 15.0
AGENT_START: Point = (256.0, 400.0)
BLOCK_START: Point = (256.0, 300.0)
WALL_LOW, WALL_HIGH = 5.0, 506.0  # centre lines of the walls, in x and in y
WALL_RADIUS = 2.0
WALL_ENDPOINTS: tuple[tuple[Point, Point], ...] = (
    ((WALL_LOW, WALL_HIGH), (WALL_LOW, WALL_LOW)),
    ((WALL_LOW, WALL_LOW), (WALL_HIGH, WALL_LOW)),
    ((WALL_HIGH, WALL_LOW), (WALL_HIGH, WALL_HIGH)),
    ((WALL_LOW, WALL_HIGH), (WALL_HIGH, WALL_HIGH)),
)
GOAL_POSE = (256.0, 256.0, math.pi / 4)

SUCCESS_POSITION_THRESHOLD = 20.0  # px, over agent x, y and block x, y jointly
SUCCESS_ANGLE_THRESHOLD = math.pi / 9
FULL_REWARD_COVERAGE = 0.95

STATE_DIM = 7
PROPRIO_DIM = 4
ACTION_DIM = 2
DEFAULT_RENDER_SIZE = pusht_render.UPSTREAM_RENDER_SIZE
TWO_PI = 2.0 * math.pi


@dataclass(frozen=True)
class BlockShape:
    """A pushable block. Vertices are body-local (y down); `position` of the body is the local origin.

    parts:   convex polygons, interior-disjoint, that make up the block (what pymunk simulates)
    outline: the block's boundary as one simple polygon, for policies that push on its edges
    """

    name: str
    parts: tuple[tuple[Point, ...], ...]
    outline: tuple[Point, ...]
    mass: float
    moment: float
    center_of_gravity: Point


TEE = BlockShape(
    name="T",
    parts=(
        ((-60.0, 0.0), (60.0, 0.0), (60.0, 30.0), (-60.0, 30.0)),  # crossbar 120 x 30
        ((-15.0, 30.0), (15.0, 30.0), (15.0, 120.0), (-15.0, 120.0)),  # stem 30 x 90
    ),
    outline=(
        (-60.0, 0.0), (60.0, 0.0), (60.0, 30.0), (15.0, 30.0),
        (15.0, 120.0), (-15.0, 120.0), (-15.0, 30.0), (-60.0, 30.0),
    ),
    mass=1.0,
    # Upstream computes the stem's moment from the crossbar's vertices: 2 x 1500 instead of 1500 + the
    # stem's own moment. Kept: it is the dynamics the dataset was generated with.
    moment=3000.0,
    # Unweighted mean of the part centroids (0, 15) and (0, 75), not the area-weighted (0, 37.5).
    center_of_gravity=(0.0, 45.0),
)

SHAPES: dict[str, BlockShape] = {TEE.name: TEE}


def block_shape(name: Any) -> BlockShape:
    """The registered block called `name` ("T")."""
    key = name.decode() if isinstance(name, bytes) else str(name)
    if key not in SHAPES:
        raise ConfigError(f"unknown PushT block shape {key!r}; valid shapes: {', '.join(SHAPES)}")
    return SHAPES[key]


def shape_from_env_info(env_info: Any, current: BlockShape) -> BlockShape:
    """The block an env_info ({"shape": "T"}, as the PushT datasets give) selects; `current` if it
    names none."""
    if not isinstance(env_info, dict):
        raise ConfigError(f"PushT env_info must be a dict like {{'shape': 'T'}}, got {env_info!r}")
    unknown = set(env_info) - {"shape"}
    if unknown:
        raise ConfigError(f"unknown PushT env_info keys {sorted(unknown)}; valid: shape")
    return block_shape(env_info["shape"]) if "shape" in env_info else current


# --------------------------------------------------------------------------------------------------
# Pure functions of states (shared by the single and the batched env)


def _float_array(values: Any, what: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"PushT {what} must be a rectangular array of numbers: {error}") from None


def as_states(states: Any, count: int | None = None) -> np.ndarray:
    """Validate states -> float64 (n, 7). Accepts (7,), (n, 7), and 5-D states without velocity
    (zero velocity, as upstream's `with_velocity=False`)."""
    array = _float_array(states, "states")
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] not in (5, STATE_DIM):
        raise ConfigError(f"PushT states must have shape (n, 7) or (n, 5), got {np.shape(states)}")
    if count is not None and array.shape[0] != count:
        raise ConfigError(f"expected {count} PushT states, got {array.shape[0]}")
    if not np.isfinite(array).all():
        raise ConfigError("PushT states must be finite, got NaN or inf")
    if array.shape[1] == 5:
        array = np.concatenate([array, np.zeros((array.shape[0], 2))], axis=1)
    return array


def as_actions(actions: Any, count: int) -> np.ndarray:
    """Validate actions -> float64 (count, 2); raw env units (0.01 = 1 px of PD-target offset)."""
    array = _float_array(actions, "actions")
    if array.shape == (ACTION_DIM,) and count == 1:
        array = array[None]
    if array.shape != (count, ACTION_DIM):
        raise ConfigError(f"PushT actions must have shape ({count}, {ACTION_DIM}), got {np.shape(actions)}")
    if not np.isfinite(array).all():
        raise ConfigError("PushT actions must be finite, got NaN or inf")
    return array


def wrapped_angle_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| on the circle, in [0, pi], for any real angles (radians)."""
    diff = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) % TWO_PI
    return np.minimum(diff, TWO_PI - diff)


def eval_states(goal_states: Any, cur_states: Any) -> dict[str, np.ndarray]:
    """Spec 2.7 on paired rows of (..., 7) states (or (..., 5) states without velocity).

    success: ||goal[0:4] - cur[0:4]|| < 20 and wrapped |goal[4] - cur[4]| < pi/9 (bool (...,))
    state_dist: ||goal - cur|| over all dims, angle unwrapped as upstream (float64 (...,))
    """
    goal = np.asarray(goal_states, dtype=np.float64)
    cur = np.asarray(cur_states, dtype=np.float64)
    if goal.shape != cur.shape or goal.shape[-1:] not in ((STATE_DIM,), (5,)):
        raise ConfigError(f"eval_state needs goal and current states of equal shape (..., 7) or (..., 5), got {goal.shape} and {cur.shape}")
    position_diff = np.linalg.norm(goal[..., :4] - cur[..., :4], axis=-1)
    angle_diff = wrapped_angle_difference(goal[..., 4], cur[..., 4])
    return {
        "success": (position_diff < SUCCESS_POSITION_THRESHOLD) & (angle_diff < SUCCESS_ANGLE_THRESHOLD),
        "state_dist": np.linalg.norm(goal - cur, axis=-1),
    }


def draw_random_state(random_state: np.random.RandomState) -> np.ndarray:
    """One state with upstream's recipe and draw order (spec 2.8): agent x, y ~ randint(50, 450),
    block x, y ~ randint(100, 400), angle = randn * 2pi - pi, zero velocity. The angle is wrapped into
    [0, 2pi): the same pose as upstream, in the state's own convention."""
    agent = [random_state.randint(50, 450), random_state.randint(50, 450)]
    block = [random_state.randint(100, 400), random_state.randint(100, 400)]
    angle = (random_state.randn() * TWO_PI - math.pi) % TWO_PI
    return np.array([*agent, *block, angle, 0.0, 0.0], dtype=np.float64)


def sample_init_goal_states(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(init, goal), float64 (7,) each, drawn in this order from `RandomState(seed)`."""
    random_state = np.random.RandomState(seed)
    init = draw_random_state(random_state)
    goal = draw_random_state(random_state)
    return init, goal


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _clip_convex(subject: list[Point], clip: np.ndarray) -> list[Point]:
    """Sutherland-Hodgman: the part of polygon `subject` inside convex polygon `clip`."""
    orientation = np.sign(
        np.dot(clip[:, 0], np.roll(clip[:, 1], -1)) - np.dot(clip[:, 1], np.roll(clip[:, 0], -1))
    )
    output = subject
    for i in range(len(clip)):
        if not output:
            break
        (ax, ay), (bx, by) = clip[i], clip[(i + 1) % len(clip)]

        def side(p: Point) -> float:
            return orientation * ((bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax))

        clipped: list[Point] = []
        for j, p in enumerate(output):
            q = output[(j + 1) % len(output)]
            sp, sq = side(p), side(q)
            if sp >= 0:
                clipped.append(p)
            if (sp >= 0) != (sq >= 0):
                t = sp / (sp - sq)
                clipped.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
        output = clipped
    return output


def coverage(block_parts: Sequence[np.ndarray], goal_parts: Sequence[np.ndarray]) -> float:
    """Fraction of the goal area covered by the block. Parts of each are convex and interior-disjoint,
    so the overlap is the sum of the pairwise convex overlaps."""
    overlap = 0.0
    for block_part in block_parts:
        for goal_part in goal_parts:
            if (block_part.min(axis=0) > goal_part.max(axis=0)).any() or (goal_part.min(axis=0) > block_part.max(axis=0)).any():
                continue  # bounding boxes apart
            clipped = _clip_convex([tuple(p) for p in block_part], goal_part)
            if len(clipped) >= 3:
                overlap += _polygon_area(np.asarray(clipped))
    goal_area = sum(_polygon_area(part) for part in goal_parts)
    return overlap / goal_area


# --------------------------------------------------------------------------------------------------
# The single environment


RESET_MODES = ("upstream", "exact")


def check_reset_mode(reset_mode: Any) -> str:
    if reset_mode not in RESET_MODES:
        raise ConfigError(f"unknown PushT reset_mode {reset_mode!r}; valid: {', '.join(RESET_MODES)}")
    return str(reset_mode)


def check_render_size(render_size: Any) -> int:
    if isinstance(render_size, bool) or not isinstance(render_size, (int, np.integer)) or not 8 <= render_size <= 1024:
        raise ConfigError(f"render_size must be an integer in [8, 1024], got {render_size!r}")
    return int(render_size)


_WALL_SEGMENTS = tuple(Segment(a, b, WALL_RADIUS) for a, b in WALL_ENDPOINTS)


@functools.lru_cache(maxsize=None)
def _goal_parts(shape: BlockShape) -> tuple[tuple[Point, ...], ...]:
    """World vertices of the goal outline: the block's parts rotated about the local origin (upstream
    draws the goal with a fresh body whose centre of gravity is the origin)."""
    body = pymunk.Body(shape.mass, shape.moment)
    body.position = GOAL_POSE[:2]
    body.angle = GOAL_POSE[2]
    return tuple(tuple(tuple(body.local_to_world(v)) for v in part) for part in shape.parts)


class PushTEnv(gymnasium.Env):
    """One PushT environment with gymnasium's API and DINO-WM's planning API (spec 2.6)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_HZ}
    state_dim = STATE_DIM
    proprio_dim = PROPRIO_DIM
    action_dim = ACTION_DIM

    def __init__(
        self,
        render_size: int = DEFAULT_RENDER_SIZE,
        shape: str = "T",
        render_mode: str | None = "rgb_array",
        reset_mode: str = "upstream",
        visual_obs: bool = True,
    ):
        """reset_mode: "upstream" (one 10 ms physics step after placing the bodies, as DINO-WM's env)
        or "exact" (the returned state is the requested one). visual_obs=False: observations hold
        proprio only and nothing is rendered (state-only rollouts, statistics)."""
        if render_mode not in (None, "rgb_array"):
            raise ConfigError(f"PushT render_mode must be 'rgb_array' or None, got {render_mode!r}")
        self.render_mode = render_mode
        self.render_size = check_render_size(render_size)
        self.reset_mode = check_reset_mode(reset_mode)
        self.visual_obs = bool(visual_obs)
        spaces_by_key = {"proprio": spaces.Box(-np.inf, np.inf, (PROPRIO_DIM,), np.float32)}
        if self.visual_obs:
            spaces_by_key["visual"] = spaces.Box(0, 255, (self.render_size, self.render_size, 3), np.uint8)
        self.observation_space = spaces.Dict(spaces_by_key)
        # Any finite action is valid: it is an offset of the PD target (1.0 = 100 px), never clipped.
        self.action_space = spaces.Box(-np.inf, np.inf, (ACTION_DIM,), np.float32)
        self._shape = block_shape(shape)
        self._random_state: np.random.RandomState | None = None
        self._build_space()
        self._frame: np.ndarray | None = None

    # ---- physics -------------------------------------------------------------------------------

    def _build_space(self) -> None:
        """A fresh pymunk space at upstream's start layout. Rebuilt at every reset so that no cached
        contact impulses (pymunk warm-starts its solver) carry over from an earlier episode: the
        trajectory from a state depends on that state only."""
        space = pymunk.Space()
        space.gravity = (0.0, 0.0)
        space.damping = 0.0
        for a, b in WALL_ENDPOINTS:
            space.add(pymunk.Segment(space.static_body, a, b, WALL_RADIUS))

        agent = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
        agent.position = AGENT_START
        space.add(agent, pymunk.Circle(agent, AGENT_RADIUS))

        block = pymunk.Body(self._shape.mass, self._shape.moment)
        parts = [pymunk.Poly(block, part) for part in self._shape.parts]
        block.center_of_gravity = self._shape.center_of_gravity
        block.position = BLOCK_START
        space.add(block, *parts)

        self._space, self._agent, self._block, self._block_parts = space, agent, block, parts
        self._goal_parts = _goal_parts(self._shape)

    def _set_state(self, state: np.ndarray) -> None:
        """Place bodies exactly at `state` (7,). The angle is set before the position: rotation is
        about the centre of gravity and would otherwise move the local origin off `state[2:4]`."""
        self._agent.position = (state[0], state[1])
        self._agent.velocity = (state[5], state[6])
        self._block.angle = state[4]
        self._block.position = (state[2], state[3])
        self._block.velocity = (0.0, 0.0)
        self._block.angular_velocity = 0.0

    def _settle(self) -> None:
        """Upstream's reset-to-state ends with one bare physics step of 10 ms: the agent moves by
        velocity x 0.01 (no PD update), and pymunk finds any overlap and gives the block the
        separating velocity, which moves it at the next step."""
        self._space.step(1.0 / SIM_HZ)

    def _advance(self, action: np.ndarray) -> None:
        """One control step: 10 physics sub-steps of the PD controller towards a fixed target."""
        dt = 1.0 / SIM_HZ
        target_x = self._agent.position.x + ACTION_SCALE * action[0]
        target_y = self._agent.position.y + ACTION_SCALE * action[1]
        for _ in range(SUBSTEPS):
            (x, y), (vx, vy) = self._agent.position, self._agent.velocity
            ax = K_P * (target_x - x) + K_V * (0.0 - vx)
            ay = K_P * (target_y - y) + K_V * (0.0 - vy)
            self._agent.velocity = (vx + ax * dt, vy + ay * dt)
            self._space.step(dt)

    def current_state(self) -> np.ndarray:
        """float64 (7,): [agent x, y, block x, y, angle in [0, 2pi), agent vx, vy]."""
        angle = self._block.angle % TWO_PI
        if angle >= TWO_PI:  # a tiny negative angle rounds up to exactly 2pi
            angle = 0.0
        (ax, ay), (bx, by), (vx, vy) = self._agent.position, self._block.position, self._agent.velocity
        return np.array([ax, ay, bx, by, angle, vx, vy], dtype=np.float64)

    # ---- observations --------------------------------------------------------------------------

    def _block_world_parts(self) -> list[tuple[Point, ...]]:
        to_world = self._block.local_to_world
        return [tuple(tuple(to_world(v)) for v in part.get_vertices()) for part in self._block_parts]

    def _contact_marks(self) -> list[tuple[Point, Point]]:
        """The contacts of the last physics sub-step as pymunk's debug draw shows them: a segment from
        2 px inside one shape to 2 px inside the other."""
        marks: list[tuple[Point, Point]] = []

        def collect(arbiter: pymunk.Arbiter) -> None:
            contact_set = arbiter.contact_point_set
            n = contact_set.normal
            depth = pusht_render.CONTACT_MARK_DEPTH
            for point in contact_set.points:
                marks.append((tuple(point.point_a - n * depth), tuple(point.point_b + n * depth)))

        self._block.each_arbiter(collect)
        return marks

    def scene(self, block_parts: Sequence[Sequence[Point]] | None = None) -> Scene:
        """The current geometry for the renderer."""
        return Scene(
            goal_parts=self._goal_parts,
            block_parts=self._block_world_parts() if block_parts is None else block_parts,
            agent_position=tuple(self._agent.position),
            agent_radius=AGENT_RADIUS,
            walls=_WALL_SEGMENTS,
            contacts=self._contact_marks(),
        )

    def _observe(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(observation, info) of the current state."""
        state = self.current_state()
        block_parts = self._block_world_parts()
        proprio = np.array([state[0], state[1], state[5], state[6]], dtype=np.float32)
        observation = {"proprio": proprio}
        if self.visual_obs:
            self._frame = pusht_render.render(self.scene(block_parts), self.render_size)
            observation["visual"] = self._frame
        else:
            self._frame = None  # `render()` draws the current state when asked, not a stale frame
        info = {
            "state": state,
            "pos_agent": state[0:2].copy(),
            "vel_agent": state[5:7].copy(),
            "block_pose": state[2:5].copy(),
            "goal_pose": np.array(GOAL_POSE),
            "coverage": coverage([np.asarray(p) for p in block_parts], [np.asarray(p) for p in self._goal_parts]),
        }
        return observation, info

    # ---- gymnasium API -------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode. options: {"init_state": (7,) or (5,), "env_info": {"shape": ...}}; without
        an init_state the state is drawn as upstream's sampler does from `RandomState(seed)` (a
        stream that continues across resets until the next seed).
        Returns (obs, info) with info["state"] float64 (7,)."""
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"init_state", "env_info"}
        if unknown:
            raise ConfigError(f"unknown PushT reset options {sorted(unknown)}; valid: init_state, env_info")
        if seed is not None:
            self._random_state = np.random.RandomState(seed)
        elif self._random_state is None:
            self._random_state = np.random.RandomState(int(self.np_random.integers(2**31)))
        if options.get("env_info") is not None:
            self.update_env(options["env_info"])
        if options.get("init_state") is not None:
            state = as_states(options["init_state"], 1)[0]
        else:
            state = draw_random_state(self._random_state)
        self._build_space()
        self._set_state(state)
        if self.reset_mode == "upstream":
            self._settle()
        return self._observe()

    def step(self, action: Any):
        """Apply one action (2,) in env units. Returns (obs, reward, terminated, truncated, info) with
        reward = clip(coverage / 0.95, 0, 1); episodes never terminate on their own (as upstream)."""
        self._advance(as_actions(action, 1)[0])
        obs, info = self._observe()
        reward = float(np.clip(info["coverage"] / FULL_REWARD_COVERAGE, 0.0, 1.0))
        return obs, reward, False, False, info

    def render(self) -> np.ndarray | None:
        """The latest observation image, uint8 (R, R, 3)."""
        if self.render_mode is None:
            return None
        if self._frame is None:
            self._frame = pusht_render.render(self.scene(), self.render_size)
        return self._frame

    # ---- DINO-WM planning API ------------------------------------------------------------------

    def update_env(self, env_info: dict[str, Any]) -> None:
        """Select the block shape ({"shape": "T"}); takes effect at the next reset, as upstream."""
        self._shape = shape_from_env_info(env_info, self._shape)

    def prepare(self, seed: int, init_state: Any) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Seed, reset to `init_state`; returns (obs, state (7,) float64)."""
        obs, info = self.reset(seed=seed, options={"init_state": init_state})
        return obs, info["state"]

    def step_multiple(self, actions: Any) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Apply actions (T, 2) in turn. Returns upstream's (obses, rewards, dones, infos), each stacked
        over T: obses {"visual": (T, R, R, 3), "proprio": (T, 4)}, infos with "state" (T, 7) etc."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != ACTION_DIM:
            raise ConfigError(f"step_multiple needs actions of shape (T, 2), got {actions.shape}")
        steps = [self.step(a) for a in as_actions(actions, actions.shape[0])]
        observations, infos = [s[0] for s in steps], [s[4] for s in steps]
        # With no action, the stacks are empty but keep the keys and shapes of the current observation.
        template_observation, template_info = (observations[0], infos[0]) if steps else self._observe()
        return (
            _stack_records(observations, template_observation),
            np.array([s[1] for s in steps], dtype=np.float64),
            np.array([s[2] for s in steps], dtype=bool),
            _stack_records(infos, template_info),
        )

    def rollout(self, seed: int, init_state: Any, actions: Any) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """prepare + step through actions (T, 2). Returns obses with T+1 frames, initial first
        ({"visual": uint8 (T+1, R, R, 3), "proprio": float32 (T+1, 4)}), and states float64 (T+1, 7)."""
        obs, state = self.prepare(seed, init_state)
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != ACTION_DIM:
            raise ConfigError(f"rollout needs actions of shape (T, 2), got {actions.shape}")
        observations, states = [obs], [state]
        for action in as_actions(actions, actions.shape[0]):
            obs, _, _, _, info = self.step(action)
            observations.append(obs)
            states.append(info["state"])
        return _stack_records(observations, observations[0]), np.stack(states)

    def eval_state(self, goal_state: Any, cur_state: Any) -> dict[str, Any]:
        """{"success": bool, "state_dist": float} for one pair of (7,) states (spec 2.7)."""
        result = eval_states(goal_state, cur_state)
        return {"success": bool(result["success"]), "state_dist": float(result["state_dist"])}

    def sample_random_init_goal_states(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return sample_init_goal_states(seed)


def _stack_records(records: Sequence[dict[str, Any]], template: dict[str, Any]) -> dict[str, np.ndarray]:
    """{key: values of `records` stacked on a new first axis} for the keys of `template`; with no
    records, empty arrays of the template's shapes and dtypes."""
    if records:
        return {key: np.stack([np.asarray(record[key]) for record in records]) for key in template}
    return {key: np.empty((0, *np.shape(value)), np.asarray(value).dtype) for key, value in template.items()}


# --------------------------------------------------------------------------------------------------
# The batched environment


class _EnvGroup:
    """Environments owned by one worker (or by the parent when running in-process).
    Every method takes local env indices and returns arrays stacked in that order."""

    def __init__(self, count: int, env_kwargs: dict[str, Any]):
        self.envs = [PushTEnv(**env_kwargs) for _ in range(count)]

    def update_env(self, local: Sequence[int], env_infos: Sequence[dict[str, Any]]) -> None:
        for i, env_info in zip(local, env_infos):
            self.envs[i].update_env(env_info)

    def reset_to(self, local: Sequence[int], states: np.ndarray) -> tuple[Obs, np.ndarray]:
        results = [self.envs[i].reset(options={"init_state": s}) for i, s in zip(local, states)]
        observations = [obs for obs, _ in results]
        return _stack_records(observations, observations[0]), np.stack([info["state"] for _, info in results])

    def step(self, local: Sequence[int], actions: np.ndarray) -> tuple[Obs, np.ndarray]:
        results = [self.envs[i].step(a) for i, a in zip(local, actions)]
        observations = [r[0] for r in results]
        return _stack_records(observations, observations[0]), np.stack([r[4]["state"] for r in results])

    def rollout(self, local: Sequence[int], states: np.ndarray, actions: np.ndarray) -> tuple[Obs, np.ndarray]:
        """Reset to states (n, 7), apply actions (n, T, 2); observations and states with T+1 frames."""
        frames = [self.reset_to(local, states)]
        for t in range(actions.shape[1]):
            frames.append(self.step(local, actions[:, t]))
        obs = {key: np.stack([f[0][key] for f in frames], axis=1) for key in ("visual", "proprio")}
        return obs, np.stack([f[1] for f in frames], axis=1)


    def simulate(self, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Final states of independent action sequences (n, T, 2) from states (n, 7), physics only
        (no rendering), on a scratch environment; the owned environments are left untouched."""
        if not hasattr(self, "_scratch"):
            self._scratch = PushTEnv(render_size=8, render_mode=None, visual_obs=False)  # never renders
        env, finals = self._scratch, np.empty((len(states), STATE_DIM))
        for i, (state, sequence) in enumerate(zip(states, actions)):
            env._build_space()
            env._set_state(state)
            for action in sequence:
                env._advance(action)
            finals[i] = env.current_state()
        return finals


def _worker_main(connection: Any, count: int, env_kwargs: dict[str, Any]) -> None:
    """A worker process: owns `count` environments and serves (method, args) requests until "close"."""
    group = _EnvGroup(count, env_kwargs)
    while True:
        method, args = connection.recv()
        if method == "close":
            connection.close()
            return
        try:
            connection.send(("ok", getattr(group, method)(*args)))
        except Exception as error:  # sent back and re-raised in the parent
            connection.send(("error", (error, traceback.format_exc())))


class PushTBatchEnv(BatchEnv):
    """`num_envs` PushT environments with persistent state, stepped in a process pool.

    Each worker process owns a fixed block of environments; a call touches only the environments in
    `indices`. With `workers` 0 or 1 everything runs in this process. Results are identical to
    stepping `PushTEnv` one at a time, whatever the number of workers.
    """

    state_dim = STATE_DIM
    proprio_dim = PROPRIO_DIM
    action_dim = ACTION_DIM

    def __init__(
        self,
        num_envs: int,
        render_size: int = DEFAULT_RENDER_SIZE,
        workers: int | None = None,
        shape: str = "T",
        reset_mode: str = "upstream",
    ):
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs <= 0:
            raise ConfigError(f"num_envs must be a positive integer, got {num_envs!r}")
        if workers is None:
            workers = min(int(num_envs), os.cpu_count() or 1)
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
            raise ConfigError(f"workers must be a non-negative integer or None, got {workers!r}")
        self.num_envs = int(num_envs)
        self.render_size = check_render_size(render_size)
        block_shape(shape)
        self.reset_mode = check_reset_mode(reset_mode)
        env_kwargs = {"render_size": self.render_size, "shape": shape, "reset_mode": self.reset_mode}

        blocks = np.array_split(np.arange(self.num_envs), max(1, min(int(workers), self.num_envs)))
        # env i lives in worker _owner[i] at local position _local[i]
        self._owner = np.concatenate([np.full(len(b), w) for w, b in enumerate(blocks)])
        self._local = np.concatenate([np.arange(len(b)) for b in blocks])
        self._connections: list[Any] = []
        self._processes: list[Any] = []
        self._in_process: _EnvGroup | None = None
        if int(workers) <= 1:
            self._in_process = _EnvGroup(self.num_envs, env_kwargs)
        else:
            # spawn: a forked child would inherit pygame/SDL state of the parent
            context = multiprocessing.get_context("spawn")
            for block in blocks:
                parent_end, child_end = context.Pipe()
                process = context.Process(target=_worker_main, args=(child_end, len(block), env_kwargs), daemon=True)
                process.start()
                child_end.close()
                self._connections.append(parent_end)
                self._processes.append(process)

    # ---- dispatch ------------------------------------------------------------------------------

    def _indices(self, indices: Sequence[int] | None) -> np.ndarray:
        if indices is None:
            return np.arange(self.num_envs)
        array = np.asarray(indices, dtype=np.int64).reshape(-1)
        if array.size and (array.min() < 0 or array.max() >= self.num_envs):
            raise ConfigError(f"env indices must be in [0, {self.num_envs}), got {array.tolist()}")
        if len(np.unique(array)) != len(array):
            raise ConfigError(f"env indices must be distinct, got {array.tolist()}")
        return array

    def _call(self, method: str, indices: np.ndarray, *per_env: Any) -> list[tuple[np.ndarray, Any]]:
        """Run `method` on the owners of `indices`; per_env arguments are sliced per owner.
        Returns [(positions in `indices`, result)] per involved owner."""
        owners = self._owner[indices]
        jobs = []
        for owner in np.unique(owners):
            positions = np.flatnonzero(owners == owner)
            local = self._local[indices[positions]].tolist()
            args = (local, *[[arg[p] for p in positions] if isinstance(arg, list) else arg[positions] for arg in per_env])
            jobs.append((positions, owner, args))
        if self._in_process is not None:
            return [(positions, getattr(self._in_process, method)(*args)) for positions, _, args in jobs]
        if not self._connections:
            raise ConfigError("this PushTBatchEnv is closed")
        for _, owner, args in jobs:
            self._send(owner, (method, args))
        return [(positions, self._receive(owner)) for positions, owner, _ in jobs]

    def _worker_died(self, owner: int) -> RuntimeError:
        return RuntimeError(f"PushT worker {owner} (process {self._processes[owner].pid}) died")

    def _send(self, owner: int, message: tuple[str, Any]) -> None:
        try:
            self._connections[owner].send(message)
        except ConnectionError as error:  # a broken pipe: the worker is gone
            raise self._worker_died(owner) from error

    def _receive(self, owner: int) -> Any:
        """The reply of worker `owner`; an error raised there is raised here, with its traceback."""
        try:
            status, payload = self._connections[owner].recv()
        except (EOFError, ConnectionError) as error:
            raise self._worker_died(owner) from error
        if status == "error":
            error, worker_traceback = payload
            raise error from RuntimeError(f"in PushT worker {owner}:\n{worker_traceback}")
        return payload

    def _gather(self, count: int, results: list[tuple[np.ndarray, tuple[Obs, np.ndarray]]], frames: int | None = None) -> tuple[Obs, np.ndarray]:
        """Reassemble per-owner (obs, states) results into the order of the request. `frames` is the
        length of the time axis of a rollout (None for a single step)."""
        if not results:  # no environment selected
            time_axis = () if frames is None else (frames,)
            size = self.render_size
            return (
                {
                    "visual": np.empty((0, *time_axis, size, size, 3), np.uint8),
                    "proprio": np.empty((0, *time_axis, PROPRIO_DIM), np.float32),
                },
                np.empty((0, *time_axis, STATE_DIM), np.float64),
            )
        first_obs, first_states = results[0][1]
        obs = {key: np.empty((count, *value.shape[1:]), value.dtype) for key, value in first_obs.items()}
        states = np.empty((count, *first_states.shape[1:]), first_states.dtype)
        for positions, (part_obs, part_states) in results:
            for key in obs:
                obs[key][positions] = part_obs[key]
            states[positions] = part_states
        return obs, states

    # ---- BatchEnv API --------------------------------------------------------------------------

    def update_env(self, env_infos: Sequence[dict[str, Any]], indices: Sequence[int] | None = None) -> None:
        index = self._indices(indices)
        env_infos = list(env_infos)
        if len(env_infos) != len(index):
            raise ConfigError(f"update_env got {len(env_infos)} env_infos for {len(index)} environments")
        for env_info in env_infos:  # validate here, so that no worker is left half-updated
            shape_from_env_info(env_info, TEE)
        self._call("update_env", index, env_infos)

    def reset_to(self, states: np.ndarray, indices: Sequence[int] | None = None) -> tuple[Obs, np.ndarray]:
        index = self._indices(indices)
        states = as_states(states, len(index))
        return self._gather(len(index), self._call("reset_to", index, states))

    def step(self, actions: np.ndarray, indices: Sequence[int] | None = None) -> tuple[Obs, np.ndarray]:
        index = self._indices(indices)
        actions = as_actions(actions, len(index))
        return self._gather(len(index), self._call("step", index, actions))

    def rollout(self, init_states: np.ndarray, actions: np.ndarray, indices: Sequence[int] | None = None) -> tuple[Obs, np.ndarray]:
        """As `BatchEnv.rollout`, in one round trip per worker."""
        index = self._indices(indices)
        init_states = as_states(init_states, len(index))
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 3 or actions.shape[0] != len(index) or actions.shape[2] != ACTION_DIM:
            raise ConfigError(f"rollout needs actions of shape ({len(index)}, T, {ACTION_DIM}), got {actions.shape}")
        if not np.isfinite(actions).all():
            raise ConfigError("PushT actions must be finite, got NaN or inf")
        return self._gather(len(index), self._call("rollout", index, init_states, actions), actions.shape[1] + 1)

    def eval_state(self, goal_states: np.ndarray, cur_states: np.ndarray) -> dict[str, np.ndarray]:
        return eval_states(goal_states, cur_states)

    def simulate(self, init_states: np.ndarray, actions: np.ndarray, env_infos: Sequence[dict[str, Any]] | None = None) -> np.ndarray:
        """Final states (n, 7) of n independent action sequences (n, T, 2) from (n, 7) states, with
        physics only, spread evenly over the workers (used by the planning ceiling's CEM)."""
        for env_info in env_infos or ():
            shape_from_env_info(env_info, TEE)  # only the T block exists
        states = as_states(init_states)
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 3 or actions.shape[0] != len(states) or actions.shape[2] != ACTION_DIM:
            raise ConfigError(f"simulate needs actions of shape ({len(states)}, T, {ACTION_DIM}), got {actions.shape}")
        if not np.isfinite(actions).all():
            raise ConfigError("PushT actions must be finite, got NaN or inf")
        if self._in_process is not None:
            return self._in_process.simulate(states, actions)
        if not self._connections:
            raise ConfigError("this PushTBatchEnv is closed")
        parts = np.array_split(np.arange(len(states)), len(self._connections))
        for owner, part in enumerate(parts):
            self._send(owner, ("simulate", (states[part], actions[part])))
        finals = np.full((len(states), STATE_DIM), np.nan)
        for owner, part in enumerate(parts):
            finals[part] = self._receive(owner)
        return finals

    def sample_random_init_goal_states(self, seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        pairs = [sample_init_goal_states(int(seed)) for seed in seeds]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def close(self) -> None:
        for connection in self._connections:
            try:
                connection.send(("close", ()))
                connection.close()
            except (OSError, BrokenPipeError):
                pass
        for process in self._processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
        self._connections, self._processes = [], []

    def __del__(self) -> None:
        if getattr(self, "_processes", None):
            self.close()


# --------------------------------------------------------------------------------------------------
# Why an episode failed


STILL_BLOCK_PX = 5.0  # a goal whose block lies less than this from its start needs no pushing


def needs_push(init_states: Any, goal_states: Any) -> np.ndarray:
    """bool (n,): whether each goal's block lies at least 5 px from its start."""
    init, goal = as_states(init_states), as_states(goal_states)
    return np.linalg.norm(goal[:, 2:4] - init[:, 2:4], axis=1) >= STILL_BLOCK_PX


def failure_breakdown(init_states: Any, goal_states: Any, final_states: Any) -> dict[str, Any]:
    """Which part of the success test (spec 2.7) each unsolved episode fails, from (n, 7) states.

    The position test is on the joint 4-D error of agent and block; a failed one is put down to the
    part with the larger error. Episodes whose goal block lies < 5 px from its start need no pushing,
    and their success says little about a model's dynamics, so the rates are also split by that.
    Returns counts, per-episode errors (px, rad) and the split success rates.
    """
    init, goal, final = (as_states(s) for s in (init_states, goal_states, final_states))
    agent_error = np.linalg.norm(goal[:, 0:2] - final[:, 0:2], axis=1)
    block_error = np.linalg.norm(goal[:, 2:4] - final[:, 2:4], axis=1)
    position_error = np.linalg.norm(goal[:, 0:4] - final[:, 0:4], axis=1)
    angle_error = wrapped_angle_difference(goal[:, 4], final[:, 4])
    position_fails = position_error >= SUCCESS_POSITION_THRESHOLD
    angle_fails = angle_error >= SUCCESS_ANGLE_THRESHOLD
    success = ~position_fails & ~angle_fails
    pushed = needs_push(init, goal)

    def rate(mask: np.ndarray) -> float | None:
        return float(success[mask].mean()) if mask.any() else None

    return {
        "failed": int((~success).sum()),
        "position_only": int((position_fails & ~angle_fails).sum()),
        "angle_only": int((angle_fails & ~position_fails).sum()),
        "position_and_angle": int((position_fails & angle_fails).sum()),
        "position_agent_dominant": int((position_fails & (agent_error > block_error)).sum()),
        "position_block_dominant": int((position_fails & (agent_error <= block_error)).sum()),
        "needs_push": int(pushed.sum()),
        "success_rate_needs_push": rate(pushed),
        "success_rate_no_push": rate(~pushed),
        "agent_error_px": np.round(agent_error, 3).tolist(),
        "block_error_px": np.round(block_error, 3).tolist(),
        "angle_error_rad": np.round(angle_error, 4).tolist(),
    }
