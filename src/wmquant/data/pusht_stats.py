"""How PushT data compare with the official `pusht_noise` data, and what planning goals they make.

The official archive cannot be downloaded, but its normalisation constants (spec 2.10) were computed
on it: they are its per-dimension means and standard deviations. Generated data are compared with
them dimension by dimension, over every valid frame of every episode. The planning protocol draws
its goals as the state 25 env steps (goal_H 5 x frameskip 5) after a random frame of a validation
episode, so the distribution of such 25-step segments says how hard the goals are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..envs import pusht as pusht_env
from .pusht_official import NORMALIZATION, PIXELS_PER_ACTION_UNIT

STATE_NAMES = ("agent x", "agent y", "block x", "block y", "block angle", "agent vx", "agent vy")
ACTION_NAMES = ("action x", "action y")

# The bounds generated data must meet (issue 14): every state mean within 0.25 official std of the
# official mean; every state std and the action std within 15 % of the official value.
MEAN_TOLERANCE_STD = 0.25
STD_TOLERANCE = 0.15
SEGMENT_STEPS = 25
STILL_BLOCK_PX = pusht_env.STILL_BLOCK_PX  # a goal whose block moved less than this needs no pushing


@dataclass(frozen=True)
class DimensionCheck:
    name: str
    official_mean: float
    mean: float
    official_std: float
    std: float
    check_mean: bool

    @property
    def mean_offset_std(self) -> float:
        """(mean - official mean) / official std."""
        return (self.mean - self.official_mean) / self.official_std

    @property
    def std_ratio(self) -> float:
        return self.std / self.official_std

    @property
    def ok(self) -> bool:
        mean_ok = not self.check_mean or abs(self.mean_offset_std) <= MEAN_TOLERANCE_STD
        return mean_ok and abs(self.std_ratio - 1.0) <= STD_TOLERANCE

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> "DimensionCheck":
        """Back from `as_dict` (a dataset manifest's `official_comparison`)."""
        return cls(entry["name"], entry["official_mean"], entry["mean"], entry["official_std"], entry["std"], entry["mean_checked"])

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "official_mean": self.official_mean,
            "mean": self.mean,
            "mean_offset_std": self.mean_offset_std,
            "official_std": self.official_std,
            "std": self.std,
            "std_ratio": self.std_ratio,
            "mean_checked": self.check_mean,
            "ok": self.ok,
        }


def _valid_frames(episodes: Sequence[dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """All frames' 7-D states (F, 7) and all actions but each episode's last (whose outcome is not
    recorded) (F - n, 2) in px."""
    states = np.concatenate([np.concatenate([e["states"], e["velocities"]], axis=1) for e in episodes]).astype(np.float64)
    actions = np.concatenate([e["rel_actions"][:-1] for e in episodes]).astype(np.float64)
    return states, actions


def official_statistics() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(state mean, state std, action mean, action std), actions in px: the normalisation constants
    of `wmquant.data.pusht` (spec 2.10), which upstream computed on the official data."""
    n = NORMALIZATION
    return (n.state_mean.double().numpy(), n.state_std.double().numpy(),
            n.action_mean.double().numpy() * PIXELS_PER_ACTION_UNIT, n.action_std.double().numpy() * PIXELS_PER_ACTION_UNIT)


def compare_with_official(episodes: Sequence[dict[str, np.ndarray]]) -> list[DimensionCheck]:
    """Per-dimension mean and std of the episodes (dicts with states (T, 5), velocities (T, 2),
    rel_actions (T, 2) in px) beside the official constants: 7 state dims, then 2 action dims
    (actions: std checked only; the official action mean is ~0 and both policies' are too)."""
    if not episodes:
        raise ValueError("no episodes to compare")
    states, actions = _valid_frames(episodes)
    state_mean, state_std, action_mean, action_std = official_statistics()
    checks = [
        DimensionCheck(name, float(state_mean[i]), states[:, i].mean(), float(state_std[i]), states[:, i].std(), True)
        for i, name in enumerate(STATE_NAMES)
    ]
    checks += [
        DimensionCheck(name, float(action_mean[i]), actions[:, i].mean(), float(action_std[i]), actions[:, i].std(), False)
        for i, name in enumerate(ACTION_NAMES)
    ]
    return checks


def segment_distribution(episodes: Sequence[dict[str, np.ndarray]], steps: int = SEGMENT_STEPS) -> dict[str, Any]:
    """Every segment from frame t to frame t + `steps` of every episode long enough: how far the block
    moves (px) and turns (rad, wrapped), how far the agent moves, the fraction of segments whose
    start already meets the success test against their end, and the fraction whose block moves less
    than 5 px (goals that need no pushing)."""
    block_moves, turns, agent_moves, solved, count = [], [], [], [], 0
    for episode in episodes:
        states = np.concatenate([episode["states"], episode["velocities"]], axis=1).astype(np.float64)
        if len(states) <= steps:
            continue
        start, end = states[:-steps], states[steps:]
        block_moves.append(np.linalg.norm(end[:, 2:4] - start[:, 2:4], axis=1))
        turns.append(pusht_env.wrapped_angle_difference(end[:, 4], start[:, 4]))
        agent_moves.append(np.linalg.norm(end[:, :2] - start[:, :2], axis=1))
        solved.append(pusht_env.eval_states(end, start)["success"])
        count += len(start)
    if count == 0:
        raise ValueError(f"no episode is longer than {steps} frames")
    block, turn, agent = (np.concatenate(v) for v in (block_moves, turns, agent_moves))

    def quantiles(values: np.ndarray) -> dict[str, float]:
        return {"median": float(np.median(values)), "p90": float(np.quantile(values, 0.9))}

    return {
        "steps": steps,
        "segments": count,
        "block_displacement_px": quantiles(block),
        "block_angle_change_rad": quantiles(turn),
        "agent_displacement_px": quantiles(agent),
        "start_meets_success": float(np.concatenate(solved).mean()),
        "block_moves_under_5px": float((block < STILL_BLOCK_PX).mean()),
    }


def statistics_table(checks: Sequence[DimensionCheck]) -> str:
    """The comparison as a Markdown table (one row per dimension)."""
    lines = [
        "| dimension | official mean | ours | offset (official std) | official std | ours | ratio | within bounds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        offset = f"{c.mean_offset_std:+.2f}" if c.check_mean else f"({c.mean_offset_std:+.2f}, not checked)"
        lines.append(
            f"| {c.name} | {c.official_mean:.2f} | {c.mean:.2f} | {offset} | {c.official_std:.2f} | {c.std:.2f} | "
            f"{c.std_ratio:.2f} | {'yes' if c.ok else '**no**'} |"
        )
    return "\n".join(lines)


def segment_table(distribution: dict[str, Any]) -> str:
    d = distribution
    return "\n".join(
        [
            f"| {d['steps']}-step segments ({d['segments']}) | median | 90th percentile |",
            "|---|---|---|",
            f"| block displacement (px) | {d['block_displacement_px']['median']:.1f} | {d['block_displacement_px']['p90']:.1f} |",
            f"| block angle change (rad) | {d['block_angle_change_rad']['median']:.2f} | {d['block_angle_change_rad']['p90']:.2f} |",
            f"| agent displacement (px) | {d['agent_displacement_px']['median']:.1f} | {d['agent_displacement_px']['p90']:.1f} |",
            "",
            f"Segments whose start already meets the success test: {d['start_meets_success']:.3f}. "
            f"Segments whose block moves less than {STILL_BLOCK_PX:.0f} px: {d['block_moves_under_5px']:.3f}.",
        ]
    )
