"""Scripted PushT policies that `wmquant data --env pusht --policy NAME` records.

- `pusher` (`ScriptedPusher`): explores. It pushes random points of the T's outline in random
  directions and so roams the whole arena; the block goes far from the centre and turns freely.
- `expert` (`ScriptedExpert`, the default): a noisy demonstrator like the one behind the official
  `pusht_noise` data. It pushes the T towards the goal pose (256, 256, pi/4), choosing each push by
  simulating it, then backs off and hovers. Its data match the official normalisation statistics
  (spec 2.10), which the roaming pusher's do not.

Both act in px (a PD-target offset; the env takes px / 100) and are deterministic given their
generator.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..envs import pusht as pusht_env
from ..envs.pusht_render import WINDOW_SIZE
from ..errors import ConfigError


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
    It never finishes: an episode lasts the frames it is given (`default_steps` unless told).
    """

    default_steps = 100
    done = False  # an episode may end once this is set
    reached_goal = False

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

    def _sample_contact(self, nearest_edge: int, nearest_along: float) -> tuple[int, float]:
        """(edge, fraction along it) of a candidate contact: next to the agent or anywhere on the
        outline (weighted by edge length)."""
        if self.rng.uniform() < self.settings.nearby_contact_probability:
            # keep pushing near where the agent already is: no travel
            return nearest_edge, float(np.clip(nearest_along + self.rng.normal(0.0, 0.15), 0.1, 0.9))
        edge = int(self.rng.choice(len(self._edge_lengths), p=self._edge_lengths / self._edge_lengths.sum()))
        return edge, float(self.rng.uniform(0.1, 0.9))

    def _candidate_pushes(self, state: np.ndarray) -> list[tuple[float, _Push]]:
        """Up to `push_candidates` feasible pushes with their travel (px) and routed waypoints: the
        stand-off point is inside the arena and off the block, a route to it exists, and the block
        does not end jammed against a wall."""
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
            edge, along = self._sample_contact(nearest_edge, nearest_along)
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
            if self._distance_to_outline(standoff[None], outline)[0] < pusht_env.AGENT_RADIUS:
                continue  # the stand-off point touches another edge (inside a concave corner)
            waypoints = self._route(state, outline, standoff, rotation @ normal)
            if waypoints is None:
                continue
            travel = float(np.sum(np.linalg.norm(np.diff(np.stack([state[:2], *waypoints]), axis=0), axis=1)))
            # pushes that end far off-centre leave the next push little room: count that as travel
            block_end = center + travel_vector
            off_centre = max(0.0, np.abs(block_end - arena_center).max() - settings.central_half_width_px)
            candidates.append((travel + off_centre, dataclasses.replace(push, waypoints=tuple(waypoints))))
        return candidates

    def _choose_push(self, state: np.ndarray) -> _Push | None:
        """A push on a random outline point, preferring those the agent reaches quickly; None if no
        candidate keeps agent and block inside the arena."""
        candidates = self._candidate_pushes(state)
        if not candidates:
            return None
        cost = np.array([c[0] for c in candidates])
        weights = np.exp(-(cost - cost.min()) / self.settings.travel_preference_px)
        return candidates[self.rng.choice(len(candidates), p=weights / weights.sum())][1]

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
# The demonstrator


@dataclass(frozen=True)
class ExpertSettings(PusherSettings):
    """Knobs of the scripted expert (px, rad, steps). The pusher's machinery settings are reused;
    the defaults below were tuned until 2000 episodes matched the official statistics (spec 2.10:
    every mean within 0.25 official std, every std within 15 %; docs/pusht_data.md)."""

    approach_max_px: float = 50.0
    push_speed_px: tuple[float, float] = (12.0, 28.0)
    push_steps: tuple[int, int] = (8, 25)  # the longest a push may run; each is cut where it does best
    push_heading_noise_rad: float = 0.15
    standoff_px: float = 15.0
    push_candidates: int = 16
    nearby_contact_probability: float = 0.3
    random_move_probability: float = 0.0
    # the goal: the official pose, reached within these tolerances (tighter than the planning test)
    goal_pose: tuple[float, float, float] = pusht_env.GOAL_POSE
    goal_position_px: float = 15.0
    goal_angle_rad: float = 0.2
    # goal error = distance of the centres of gravity + weight x angle error; the angle counts little
    # while the block is far (move it first) and much once it is close (then turn it)
    angle_weight_far_px_per_rad: float = 10.0
    angle_weight_near_px_per_rad: float = 60.0
    near_distance_px: float = 40.0
    far_distance_px: float = 120.0
    travel_penalty: float = 0.05  # per px of agent travel to the stand-off point
    temperature: float = 0.03  # softmax temperature as a fraction of the current goal error
    idle_steps: tuple[int, int] = (0, 60)  # an episode starts with this many steps of hesitation
    backoff_px: tuple[float, float] = (100.0, 200.0)  # after the goal: retreat this far from the block
    hover_steps: tuple[int, int] = (30, 90)  # ... then hover this long, and the episode ends


class ScriptedExpert(ScriptedPusher):
    """Pushes the T towards the goal pose: each push is drawn from feasible candidates (the pusher's
    contact points, stand-off points and routes) by its progress on the goal error, predicted by
    running the push closed-loop in a scratch copy of the env's physics. Re-plans after every push,
    so a push that loses contact is followed by a new approach. Once the block is at the goal pose
    it backs off, hovers, and sets `done`.
    """

    default_steps = 300  # the cap: an episode ends once the expert is done

    def __init__(self, rng: np.random.Generator, shape: pusht_env.BlockShape = pusht_env.TEE, settings: ExpertSettings = ExpertSettings()):
        super().__init__(rng, shape, settings)
        self.settings: ExpertSettings = settings
        # physics only: predictions step the bodies directly, as the batched env's `simulate` does
        self._scratch = pusht_env.PushTEnv(render_mode=None, render_size=8, shape=shape.name, visual_obs=False)
        self._goal_angle = settings.goal_pose[2]
        self._goal_cog = self._block_center(np.array([0.0, 0.0, *settings.goal_pose]))

    # ---- the goal ------------------------------------------------------------------------------

    def goal_error(self, state: np.ndarray) -> float:
        """px: distance between the block's and the goal's centres of gravity + a distance-dependent
        weight x the wrapped angle error."""
        settings = self.settings
        distance = float(np.linalg.norm(self._block_center(state) - self._goal_cog))
        angle = float(pusht_env.wrapped_angle_difference(state[4], self._goal_angle))
        blend = np.clip((distance - settings.near_distance_px) / (settings.far_distance_px - settings.near_distance_px), 0.0, 1.0)
        weight = settings.angle_weight_near_px_per_rad + blend * (settings.angle_weight_far_px_per_rad - settings.angle_weight_near_px_per_rad)
        return distance + weight * angle

    def at_goal(self, state: np.ndarray) -> bool:
        settings = self.settings
        position = np.linalg.norm(state[2:4] - np.asarray(settings.goal_pose[:2]))
        angle = pusht_env.wrapped_angle_difference(state[4], self._goal_angle)
        return bool(position < settings.goal_position_px and angle < settings.goal_angle_rad)

    # ---- choosing a push -----------------------------------------------------------------------

    def predict_push(self, state: np.ndarray, push: _Push) -> np.ndarray:
        """The states (k, 7) after each step of `push`, run closed-loop in the scratch physics from
        its stand-off point (the agent at rest there, the block as in `state`); k <= push.steps, fewer
        if the push loses the block."""
        scratch = self._scratch
        start = state.copy()
        start[:2] = push.waypoints[-1]
        start[5:7] = 0.0
        scratch._build_space()
        scratch._set_state(start)
        state_ref = [scratch.current_state()]
        trajectory = [state_ref[0]]
        for action_px in self._push(state_ref, push):
            scratch._advance(action_px / pusht_env.ACTION_SCALE)
            state_ref[0] = scratch.current_state()
            trajectory.append(state_ref[0])
        return np.stack(trajectory[1:] or trajectory)

    def _choose_push(self, state: np.ndarray) -> _Push | None:
        """A feasible push drawn by softmax over predicted progress minus a travel penalty; None if
        no candidate is feasible. Each candidate is cut at the step its predicted goal error is
        least, so that pushes shorten as the block nears the goal instead of overshooting."""
        candidates = self._candidate_pushes(state)
        if not candidates:
            return None
        settings = self.settings
        error = self.goal_error(state)
        scores, pushes = [], []
        for travel, push in candidates:
            errors = [self.goal_error(s) for s in self.predict_push(state, push)]
            best = int(np.argmin(errors))
            scores.append(error - errors[best] - settings.travel_penalty * travel)
            pushes.append(dataclasses.replace(push, steps=best + 1))
        scores_array = np.array(scores)
        temperature = max(settings.temperature * error, 1e-3)
        weights = np.exp((scores_array - scores_array.max()) / temperature)
        return pushes[self.rng.choice(len(pushes), p=weights / weights.sum())]

    # ---- behaviour -----------------------------------------------------------------------------

    def _backoff_point(self, state: np.ndarray) -> np.ndarray:
        """A point `backoff_px` from the block in a random direction, inside the arena margin."""
        settings = self.settings
        lo, hi = settings.arena_margin_px, WINDOW_SIZE - settings.arena_margin_px
        center = self._block_center(state)
        for _ in range(32):
            angle = self.rng.uniform(0.0, 2 * math.pi)
            point = center + self.rng.uniform(*settings.backoff_px) * np.array([math.cos(angle), math.sin(angle)])
            if ((lo <= point) & (point <= hi)).all():
                return point
        return np.clip(point, lo, hi)

    def _behaviour(self, state_ref: list[np.ndarray]) -> Iterator[np.ndarray]:
        settings = self.settings
        for _ in range(int(self.rng.integers(settings.idle_steps[0], settings.idle_steps[1] + 1))):
            yield np.zeros(2)
        while not self.at_goal(state_ref[0]):
            push = self._choose_push(state_ref[0])
            if push is None:
                yield from self._wander()
                continue
            for waypoint in push.waypoints[:-1]:
                yield from self._approach(state_ref, waypoint, settings.waypoint_tolerance_px)
            yield from self._approach(state_ref, push.waypoints[-1], settings.arrival_px)
            yield from self._push(state_ref, push)
        self.reached_goal = True
        backoff = self._backoff_point(state_ref[0])
        away = backoff - self._block_center(state_ref[0])
        away /= max(float(np.linalg.norm(away)), 1e-9)
        route = self._route(state_ref[0], self._outline_world(state_ref[0]), backoff, away) or [backoff]
        for waypoint in route:
            yield from self._approach(state_ref, waypoint, settings.waypoint_tolerance_px)
        for _ in range(int(self.rng.integers(settings.hover_steps[0], settings.hover_steps[1] + 1))):
            yield np.zeros(2)
        self.done = True
        while True:
            yield np.zeros(2)


POLICIES = {"expert": ScriptedExpert, "pusher": ScriptedPusher}
DEFAULT_POLICY = "expert"


def policy_class(name: str) -> type[ScriptedPusher]:
    """The registered policy called `name` ("expert" or "pusher")."""
    if name not in POLICIES:
        raise ConfigError(f"unknown PushT policy {name!r}; valid policies: {', '.join(POLICIES)}")
    return POLICIES[name]


def make_policy(name: str, rng: np.random.Generator) -> ScriptedPusher:
    """The registered policy `name` drawing from `rng`."""
    return policy_class(name)(rng)
