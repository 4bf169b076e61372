"""The goal-cost landscape of a frozen encoder: is latent MSE to the goal usable as a planning cost?

For goals spread over the env, every position of a grid is rendered, encoded, and its cost (visual
latent MSE to the goal's latent) is compared with its true distance to the goal:

* Spearman correlation of cost with distance (Euclidean, and for Wall also geodesic: the shortest
  path through the door), averaged over goals;
* false minima: goals for which some position far from the goal (> `far` px) costs less than some
  position near it (`near` band, 2-4 px for Wall); such a goal can trap CEM;
* a PNG cost map for a few goals (dark = cheap; the goal is marked).

Wall varies the dot position over the free space. PushT sweeps the block three ways around each goal,
the agent held at the goal's position: its position (angle at the goal's), its angle (position at the
goal's), and both together; the joint sweep's distance is the pose error in units of the success test
(max(position error / 20 px, angle error / (pi/9))), so that a cost that ignores the angle shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy import stats as sstats
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra

Encode = Callable[[np.ndarray], torch.Tensor]  # uint8 frames (P, H, W, 3) -> latents (P, N, E)

#: Wall goal g of landscape seed s is drawn with env seed s * GOAL_SEED_STRIDE + g (a 32-bit seed)
GOAL_SEED_STRIDE = 1000
LANDSCAPE_SEEDS = 2**32 // GOAL_SEED_STRIDE


@dataclass
class LandscapeReport:
    env: str
    n_goals: int
    spearman_euclidean: float
    spearman_geodesic: float | None
    false_minima: int
    near_band: tuple[float, float]
    far: float
    per_goal: list[dict] = field(default_factory=list)
    figure: str | None = None
    # PushT only: the block-angle sweep and the joint position-and-angle sweep
    spearman_angle: float | None = None
    angle_false_minima: int | None = None
    spearman_pose: float | None = None
    pose_false_minima: int | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}

    def summary(self) -> str:
        geo = "" if self.spearman_geodesic is None else f", geodesic {self.spearman_geodesic:.3f}"
        text = (f"{self.env}: Spearman(cost, distance) euclidean {self.spearman_euclidean:.3f}{geo}; "
                f"false minima in {self.false_minima} of {self.n_goals} goals")
        if self.spearman_angle is not None:
            text += (f"\n{self.env} block angle: Spearman(cost, angle error) {self.spearman_angle:.3f}; false minima in "
                     f"{self.angle_false_minima} of {self.n_goals} goals"
                     f"\n{self.env} block pose (position and angle): Spearman(cost, pose error) {self.spearman_pose:.3f}; "
                     f"false minima in {self.pose_false_minima} of {self.n_goals} goals")
        return text


def _costs(encode: Encode, frames: np.ndarray, goal_frames: np.ndarray, batch: int = 512) -> np.ndarray:
    """(G, P) latent MSE between every grid frame and every goal frame."""
    def enc(x: np.ndarray) -> torch.Tensor:
        return torch.cat([encode(x[i : i + batch]).float().flatten(1) for i in range(0, len(x), batch)])

    z = enc(frames)
    zg = enc(goal_frames)
    # mean over features of (z - zg)^2 = (|z|^2 + |zg|^2 - 2 z.zg) / F
    sq = (zg.pow(2).sum(1, keepdim=True) + z.pow(2).sum(1)[None] - 2 * zg @ z.T) / z.shape[1]
    return sq.clamp(min=0).double().numpy()


def _false_minimum(cost: np.ndarray, dist: np.ndarray, near: tuple[float, float], far: float) -> bool:
    near_mask = (dist >= near[0]) & (dist <= near[1])
    far_mask = dist > far
    if not near_mask.any() or not far_mask.any():
        return False
    # A usable cost ranks every near position before every far one; any far position cheaper than
    # some near position is a basin CEM can settle in.
    return bool(cost[far_mask].min() < cost[near_mask].max())


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    # A constant cost or distance ranks nothing: 0 (scipy would warn and return NaN).
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    rho = sstats.spearmanr(a, b).statistic
    return float(rho) if np.isfinite(rho) else 0.0


# --------------------------------------------------------------------------------------------------
# Wall
def wall_free_positions(wall_x: int, door_y: int, step: float = 2.0) -> np.ndarray:
    """Grid positions (P, 2) the dot can occupy: inside the border and off the wall (or in the door)."""
    from ..envs.wall import BORDER_HIGH, BORDER_LOW, DOOR_HALF_HEIGHT, WALL_HALF_WIDTH

    grid = np.arange(BORDER_LOW + 1.5, BORDER_HIGH - 1.0, step)
    xs, ys = np.meshgrid(grid, grid)
    pos = np.stack([xs.ravel(), ys.ravel()], 1)
    in_band = np.abs(pos[:, 0] - wall_x) <= WALL_HALF_WIDTH + 0.5
    in_door = np.abs(pos[:, 1] - door_y) <= DOOR_HALF_HEIGHT
    return pos[~in_band | in_door]


def wall_geodesic(points: np.ndarray, goals: np.ndarray, wall_x: int, door_y: int) -> np.ndarray:
    """Shortest-path lengths (G, P) around the wall, on a 0.5-px grid of free space."""
    from ..envs.wall import BORDER_HIGH, BORDER_LOW, DOOR_HALF_HEIGHT, WALL_HALF_WIDTH

    res = 0.5
    coords = np.arange(BORDER_LOW, BORDER_HIGH + 1e-9, res)
    n = len(coords)
    xs, ys = np.meshgrid(coords, coords)  # [row=y, col=x]
    free = ~((np.abs(xs - wall_x) <= WALL_HALF_WIDTH) & (np.abs(ys - door_y) > DOOR_HALF_HEIGHT))
    index = -np.ones((n, n), dtype=np.int64)
    index[free] = np.arange(free.sum())
    rows, cols, weights = [], [], []
    # 16-neighbour moves (knight moves included) keep the grid metric within ~3% of Euclidean.
    for dy, dx in [(0, 1), (1, 0), (1, 1), (1, -1), (1, 2), (2, 1), (1, -2), (2, -1)]:  # dy >= 0: each edge once
        c0, c1 = max(0, -dx), n - max(0, dx)
        a = index[0 : n - dy, c0:c1]
        b = index[dy:n, c0 + dx : c1 + dx]
        ok = (a >= 0) & (b >= 0)
        rows.append(a[ok])
        cols.append(b[ok])
        weights.append(np.full(ok.sum(), res * np.hypot(dx, dy)))
    graph = coo_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(free.sum(),) * 2)

    def node(p: np.ndarray) -> np.ndarray:
        c = np.clip(np.round((p[:, 0] - BORDER_LOW) / res).astype(int), 0, n - 1)
        r = np.clip(np.round((p[:, 1] - BORDER_LOW) / res).astype(int), 0, n - 1)
        return index[r, c]

    goal_nodes = node(goals)
    dist = dijkstra(graph, directed=False, indices=goal_nodes)
    return dist[:, node(points)]


def wall_landscape(
    encode: Encode, n_goals: int = 30, seed: int = 0, step: float = 2.0,
    near: tuple[float, float] = (2.0, 4.0), far: float = 16.0, figure: Path | None = None, maps: int = 4,
    wall_x: int = 32, door_y: int = 30,
) -> LandscapeReport:
    from ..envs.wall import render_frames, sample_init_goal, wall_masks

    points = wall_free_positions(wall_x, door_y, step)
    goals = np.stack([sample_init_goal(seed * GOAL_SEED_STRIDE + g, wall_x)[1] for g in range(n_goals)])
    mask = wall_masks(np.array([wall_x]), np.array([door_y]))
    frames = render_frames(points, np.repeat(mask, len(points), 0))
    goal_frames = render_frames(goals, np.repeat(mask, len(goals), 0))
    cost = _costs(encode, frames, goal_frames)
    euclid = np.linalg.norm(points[None] - goals[:, None], axis=-1)
    geodesic = wall_geodesic(points, goals, wall_x, door_y)
    per_goal, false = [], 0
    for g in range(n_goals):
        fm = _false_minimum(cost[g], geodesic[g], near, far)
        false += fm
        per_goal.append({"goal": goals[g].round(2).tolist(), "spearman_euclidean": _spearman(cost[g], euclid[g]),
                         "spearman_geodesic": _spearman(cost[g], geodesic[g]), "false_minimum": fm})
    report = LandscapeReport(
        env="wall", n_goals=n_goals,
        spearman_euclidean=float(np.mean([p["spearman_euclidean"] for p in per_goal])),
        spearman_geodesic=float(np.mean([p["spearman_geodesic"] for p in per_goal])),
        false_minima=int(false), near_band=near, far=far, per_goal=per_goal,
    )
    if figure is not None:
        _cost_maps(points, cost[:maps], goals[:maps], figure, "dot position x", "dot position y", mask[0])
        report.figure = str(figure)
    return report


# --------------------------------------------------------------------------------------------------
# PushT
def pusht_landscape(
    encode: Encode, render_size: int, n_goals: int = 12, seed: int = 0, span: float = 120.0, step: float = 12.0,
    near: tuple[float, float] = (5.0, 20.0), far: float = 60.0, figure: Path | None = None, maps: int = 4,
    angle_steps: int = 36, angle_near: tuple[float, float] = (0.05, 0.3), angle_far: float = 1.0,
    pose_span: float = 60.0, pose_step: float = 20.0, pose_angles: int = 9, reset_mode: str = "upstream",
) -> LandscapeReport:
    """Per goal: the block's position on a grid of +-span around the goal's (angle at the goal's);
    its angle at `angle_steps` offsets over the circle (position at the goal's); and a joint grid of
    +-pose_span positions x `pose_angles` angle offsets in [-pi/2, pi/2]. The agent stays at the
    goal's position throughout. Near/far bands are px for position, rad for angle, and success-test
    units (1 = on the threshold) for the joint sweep."""
    from ..envs import make_batch
    from ..envs.pusht import SUCCESS_ANGLE_THRESHOLD, SUCCESS_POSITION_THRESHOLD, wrapped_angle_difference

    rs = np.random.RandomState(seed)
    offsets = np.arange(-span, span + 1e-9, step)
    ox, oy = np.meshgrid(offsets, offsets)
    grid = np.stack([ox.ravel(), oy.ravel()], 1)
    angle_offsets = np.linspace(-np.pi, np.pi, angle_steps, endpoint=False)
    pose_offsets = np.arange(-pose_span, pose_span + 1e-9, pose_step)
    px, py, pa = np.meshgrid(pose_offsets, pose_offsets, np.linspace(-np.pi / 2, np.pi / 2, pose_angles), indexing="ij")
    pose_grid = np.stack([px.ravel(), py.ravel(), pa.ravel()], 1)
    per_goal, false, angle_false, pose_false = [], 0, 0, 0
    costs_for_maps, points_for_maps, goals_xy = [], [], []
    env = make_batch("pusht", max(len(grid), len(pose_grid), angle_steps), render_size=render_size, workers=0, reset_mode=reset_mode)
    goal_env = make_batch("pusht", 1, render_size=render_size, workers=0, reset_mode=reset_mode)

    def sweep(goal: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cost (P,), reached states (P, 7), reached goal (7,))."""
        obs, reached = env.reset_to(states, indices=range(len(states)))
        goal_obs, goal_reached = goal_env.reset_to(goal[None])
        return _costs(encode, obs["visual"], goal_obs["visual"])[0], reached, goal_reached[0]

    try:
        for g in range(n_goals):
            agent = rs.uniform(60, 450, size=2)
            block = rs.uniform(150, 360, size=2)
            angle = rs.uniform(0, 2 * np.pi)
            goal = np.array([*agent, *block, angle, 0.0, 0.0])

            states = np.repeat(goal[None], len(grid), 0)
            states[:, 2:4] = block + grid
            cost, reached, goal_reached = sweep(goal, states)
            dist = np.linalg.norm(reached[:, :4] - goal_reached[:4], axis=1)
            fm = _false_minimum(cost, dist, near, far)

            states = np.repeat(goal[None], angle_steps, 0)
            states[:, 4] = (angle + angle_offsets) % (2 * np.pi)
            angle_cost, reached_a, goal_reached = sweep(goal, states)
            angle_dist = wrapped_angle_difference(reached_a[:, 4], goal_reached[4])
            angle_fm = _false_minimum(angle_cost, angle_dist, angle_near, angle_far)

            states = np.repeat(goal[None], len(pose_grid), 0)
            states[:, 2:4] = block + pose_grid[:, :2]
            states[:, 4] = (angle + pose_grid[:, 2]) % (2 * np.pi)
            pose_cost, reached_p, goal_reached = sweep(goal, states)
            pose_dist = np.maximum(
                np.linalg.norm(reached_p[:, :4] - goal_reached[:4], axis=1) / SUCCESS_POSITION_THRESHOLD,
                wrapped_angle_difference(reached_p[:, 4], goal_reached[4]) / SUCCESS_ANGLE_THRESHOLD,
            )
            # near: within the success test; far: at least 3x outside it on position or angle
            pose_fm = _false_minimum(pose_cost, pose_dist, (0.0, 1.0), 3.0)

            false, angle_false, pose_false = false + fm, angle_false + angle_fm, pose_false + pose_fm
            per_goal.append({
                "goal": goal.round(2).tolist(),
                "spearman_euclidean": _spearman(cost, dist), "false_minimum": fm,
                "spearman_angle": _spearman(angle_cost, angle_dist), "angle_false_minimum": angle_fm,
                "spearman_pose": _spearman(pose_cost, pose_dist), "pose_false_minimum": pose_fm,
            })
            if g < maps:
                costs_for_maps.append(cost)
                points_for_maps.append(reached[:, 2:4])
                goals_xy.append(goal_reached[2:4])
    finally:
        env.close()
        goal_env.close()

    def mean(key: str) -> float:
        return float(np.mean([p[key] for p in per_goal]))

    report = LandscapeReport(
        env="pusht", n_goals=n_goals, spearman_euclidean=mean("spearman_euclidean"),
        spearman_geodesic=None, false_minima=int(false), near_band=near, far=far, per_goal=per_goal,
        spearman_angle=mean("spearman_angle"), angle_false_minima=int(angle_false),
        spearman_pose=mean("spearman_pose"), pose_false_minima=int(pose_false),
    )
    if figure is not None and costs_for_maps:
        _cost_maps(None, costs_for_maps, goals_xy, figure, "block x", "block y", None, points_list=points_for_maps)
        report.figure = str(figure)
    return report


def _cost_maps(points, costs, goals, path: Path, xlabel: str, ylabel: str, wall_mask, points_list=None) -> None:
    from ..planning.plots import _pyplot, save_figure

    plt = _pyplot()
    count = len(costs)
    fig, axes = plt.subplots(1, count, figsize=(3.9 * count, 3.3), squeeze=False)
    for i in range(count):
        ax = axes[0, i]
        pts = points if points_list is None else points_list[i]
        sc = ax.scatter(pts[:, 0], pts[:, 1], c=np.log10(costs[i] + 1e-6), cmap="viridis", s=14, marker="s")
        ax.scatter([goals[i][0]], [goals[i][1]], c="red", s=40, marker="*")
        if wall_mask is not None:
            ys, xs = np.nonzero(wall_mask)
            ax.scatter(xs, ys, c="black", s=2, marker="s")
        ax.invert_yaxis()
        ax.set_aspect("equal")
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        fig.colorbar(sc, ax=ax, fraction=0.046, label="log10 latent MSE")
    fig.tight_layout()
    save_figure(fig, path)


def encoder_fn(model, img_size: int, device: torch.device):
    """uint8 frames (P, H, W, 3) -> the model's visual latents (P, N, E), as planning computes them."""
    from ..data.transforms import to_model_input

    model = model.to(device).eval()

    @torch.no_grad()
    def encode(frames: np.ndarray) -> torch.Tensor:
        x = to_model_input(frames, img_size, channels_last=True, device=device)
        return model.encoder(model.resize_for_encoder(x)).float().cpu()

    return encode
