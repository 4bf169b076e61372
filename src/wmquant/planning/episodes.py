"""Planning episodes: the (initial state, goal state, layout) triples a planner is scored on.

An episode set is a pure function of (env, seed, n_evals, goal source, dataset split, goal_H,
frameskip). Each episode draws from its own generator, keyed by its env seed, so episode n is the same
whatever ran before, whatever the batch size, and whether 10 or 50 episodes were asked for. (Upstream
drew dataset segments from Python's global `random`, so the episode set depended on which method ran
first; see docs/differences.md.)

Evaluation episodes use env seeds `seed * n + 1` and the validation split; calibration episodes use
`seed * n + 2` and the training split, exactly as the original study.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..data.base import TrajectoryDataset
from ..errors import ConfigError, DatasetError

GOAL_SOURCES = ("random_state", "dset", "random_action")

# The default Wall layout (spec 1.1): used when no dataset supplies one.
DEFAULT_WALL_INFO = {"fix_wall_location": 32, "fix_door_location": 30}


@dataclass
class EpisodeSet:
    """n episodes. States are raw env states (n, S); observations are what the env renders."""

    env: str
    seeds: list[int]
    init_states: np.ndarray
    goal_states: np.ndarray
    env_infos: list[dict[str, Any]]
    obs_0: dict[str, np.ndarray]  # visual uint8 (n, H, W, 3), proprio (n, P)
    obs_g: dict[str, np.ndarray]
    gt_actions: np.ndarray | None = None  # raw env actions (n, goal_H * frameskip, A) for dset goals
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.seeds)

    def subset(self, indices: Sequence[int]) -> "EpisodeSet":
        idx = list(indices)
        pick = lambda d: {k: v[idx] for k, v in d.items()}  # noqa: E731
        return EpisodeSet(
            env=self.env,
            seeds=[self.seeds[i] for i in idx],
            init_states=self.init_states[idx],
            goal_states=self.goal_states[idx],
            env_infos=[self.env_infos[i] for i in idx],
            obs_0=pick(self.obs_0),
            obs_g=pick(self.obs_g),
            gt_actions=None if self.gt_actions is None else self.gt_actions[idx],
            meta=dict(self.meta),
        )


def check_seed(seed: int) -> int:
    # seed*n+1 and seed*n+2 are distinct and disjoint only for seed >= 2: seed 0 repeats one
    # episode n times, seed 1 makes evaluation and calibration share n-1 episodes.
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 2:
        raise ConfigError(
            f"seed must be an integer >= 2 (episode seeds are seed*n+1 and seed*n+2), got {seed!r}"
        )
    return int(seed)


def evaluation_seeds(seed: int, n_evals: int) -> list[int]:
    """Env seeds of the evaluation episodes: seed*n + 1 (upstream's)."""
    seed = check_seed(seed)
    return [seed * n + 1 for n in range(n_evals)]


def calibration_seeds(seed: int, n_evals: int, replicate: int = 0) -> list[int]:
    """Env seeds of the calibration episodes: seed*n + 2 (QuantWM's); disjoint from evaluation_seeds
    (seed*n + 1 never equals seed*m + 2 for seed >= 2).

    replicate r > 0 (`calib_seed_offset`) continues the same sequence past the first r*n_evals
    episodes, n = r*n_evals .. (r+1)*n_evals - 1: a calibration set disjoint from replicate 0's and
    from evaluation, for repeating a run with another calibration draw."""
    seed = check_seed(seed)
    if isinstance(replicate, bool) or not isinstance(replicate, (int, np.integer)) or replicate < 0:
        raise ConfigError(f"calib_seed_offset must be an integer >= 0 (0 = the study's calibration set), got {replicate!r}")
    start = int(replicate) * n_evals
    return [seed * n + 2 for n in range(start, start + n_evals)]


def _episode_rng(env_seed: int) -> np.random.Generator:
    # A generator of its own per episode; the extra word keeps it apart from the env's RandomState(seed).
    return np.random.default_rng([int(env_seed), 0x5E6])


def _draw_segment(dataset: TrajectoryDataset, traj_len: int, rng: np.random.Generator) -> tuple[int, int]:
    lengths = np.array([dataset.seq_length(i) for i in range(len(dataset))])
    eligible = np.flatnonzero(lengths >= traj_len)
    if eligible.size == 0:
        raise DatasetError(
            f"no trajectory in the dataset has {traj_len} frames (goal_H * frameskip + 1); "
            f"the longest has {int(lengths.max()) if lengths.size else 0}; lower goal_H or use longer episodes"
        )
    traj = int(eligible[rng.integers(eligible.size)])
    offset = int(rng.integers(0, lengths[traj] - traj_len + 1))
    return traj, offset


def make_episodes(
    batch_env,
    env_name: str,
    seeds: Sequence[int],
    goal_source: str,
    goal_H: int,
    frameskip: int,
    dataset: TrajectoryDataset | None = None,
) -> EpisodeSet:
    """Build the episodes for `seeds` in `batch_env` (a BatchEnv with len(seeds) environments).

    random_state: init/goal from `env.sample_random_init_goal_states(seed)`; the layout comes from a
        dataset segment when a dataset is given, else the default layout.
    dset / random_action: a segment of goal_H * frameskip + 1 frames from the dataset; the env replays
        its actions (or random actions) from the segment's first state and the goal is the last frame.
    """
    if goal_source not in GOAL_SOURCES:
        raise ConfigError(f"unknown goal_source {goal_source!r}; valid: {', '.join(GOAL_SOURCES)}")
    if goal_H < 1:
        raise ConfigError(f"goal_H must be >= 1, got {goal_H}")
    seeds = [int(s) for s in seeds]
    n = len(seeds)
    rngs = [_episode_rng(s) for s in seeds]
    traj_len = frameskip * goal_H + 1

    env_infos: list[dict[str, Any]] = []
    segments: list[tuple[int, int]] = []
    if dataset is not None:
        for rng in rngs:
            seg = _draw_segment(dataset, traj_len if goal_source != "random_state" else 2, rng)
            segments.append(seg)
            env_infos.append(dict(dataset.trajectory(seg[0]).env_info))
    elif goal_source == "random_state":
        env_infos = [dict(DEFAULT_WALL_INFO) if env_name == "wall" else {} for _ in seeds]
    else:
        raise ConfigError(f"goal_source={goal_source} needs a dataset: set dataset_path=DIR (see `wmquant data --help`)")

    batch_env.update_env(env_infos)
    gt_actions = None
    # An episode keeps the states it was given (sampled, or the dataset's), as upstream's state_0:
    # planning resets to them, and the env's own reset step (PushT's 10 ms settle) runs once there.
    # The observations are those of that reset.
    if goal_source == "random_state":
        init_states, goal_states = batch_env.sample_random_init_goal_states(seeds)
        obs_0, _ = batch_env.reset_to(init_states)
        obs_g, _ = batch_env.reset_to(goal_states)
    else:
        init_list, act_list = [], []
        for (traj, offset), rng in zip(segments, rngs):
            ep = dataset.trajectory(traj)
            init_list.append(ep.states[offset].numpy().astype(np.float64))
            actions = ep.actions[offset : offset + frameskip * goal_H].numpy().astype(np.float64)
            if goal_source == "random_action":
                norm = dataset.normalization
                random_norm = rng.standard_normal(actions.shape)
                actions = random_norm * norm.action_std.numpy() + norm.action_mean.numpy()
            act_list.append(actions)
        init_states = np.stack(init_list)
        gt_actions = np.stack(act_list)
        obses, states = batch_env.rollout(init_states, gt_actions)
        obs_0 = {k: v[:, 0] for k, v in obses.items()}
        obs_g = {k: v[:, -1] for k, v in obses.items()}
        goal_states = states[:, -1]  # the replayed goal, as upstream's state_g

    return EpisodeSet(
        env=env_name,
        seeds=seeds,
        init_states=np.asarray(init_states, dtype=np.float64),
        goal_states=np.asarray(goal_states, dtype=np.float64),
        env_infos=env_infos,
        obs_0={k: np.asarray(v) for k, v in obs_0.items()},
        obs_g={k: np.asarray(v) for k, v in obs_g.items()},
        gt_actions=gt_actions,
        meta={"goal_source": goal_source, "goal_H": goal_H, "frameskip": frameskip, "n": n},
    )
