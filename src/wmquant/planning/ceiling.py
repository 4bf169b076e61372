"""The planning ceiling: the same MPC-CEM protocol with the true env dynamics in place of the world
model and a Euclidean state cost.

It separates what a world model loses from what the planner and the env allow: a model cannot plan
better than CEM with perfect dynamics under a cost that ignores walls and contacts (much of the gap to
1.0 on Wall is the Euclidean cost stalling at the wall face; see ../shared/notes/feasibility-wall.md).

Sampled action sequences are simulated without rendering (`simulate_states`); noise comes from the
same per-(seed, episode, iteration) generators as model-based planning.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.base import Normalization
from .cem import CEMConfig, noise_generator
from .checkpoint import MPCState, announce_resume, decode_success_iter, encode_success_iter, load_state, replay, save_state
from .episodes import EpisodeSet
from .mpc import PlanningTrace

#: What a ceiling checkpoint keeps per episode (it has no model measurements).
CEILING_ARRAYS = ("succeeded", "success_iter", "cur_states")
# Weights of the state dimensions in the Euclidean cost. PushT: agent xy, block xy in px, and the
# block angle converted to px with the success thresholds' ratio (20 px ~ pi/9 rad).
STATE_COST_WEIGHTS = {"wall": np.array([1.0, 1.0]), "pusht": np.array([1.0, 1.0, 1.0, 1.0, 20.0 / (np.pi / 9)])}


def state_cost(env_name: str, states: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Squared weighted Euclidean distance over the leading state dims: (..., S) -> (...)."""
    weights = STATE_COST_WEIGHTS[env_name]
    diff = states[..., : len(weights)] - goal[..., : len(weights)]
    if env_name == "pusht":
        diff[..., 4] = np.remainder(diff[..., 4] + np.pi, 2 * np.pi) - np.pi
    return ((diff * weights) ** 2).sum(-1)


def simulate_states(env_name: str, env, init_states: np.ndarray, actions: np.ndarray, env_infos) -> np.ndarray:
    """Final states of (n, T, A) raw action sequences from (n, S) states, physics only."""
    if env_name == "wall":
        from ..envs.wall import WallLayout, propose_and_collide

        layouts = [WallLayout.from_env_info(info) for info in env_infos]
        wall_x = np.array([lay.wall_x for lay in layouts])
        door_y = np.array([lay.door_y for lay in layouts])
        pos = np.array(init_states, dtype=np.float64)
        for t in range(actions.shape[1]):
            pos, _ = propose_and_collide(pos, actions[:, t], wall_x, door_y)
        return pos
    return env.simulate(init_states, actions, env_infos)


def true_dynamics_cem(env_name: str, env, states: np.ndarray, goal_states: np.ndarray, env_infos: list,
                      episode_seeds: list[int], iteration: int, seed: int, cem: CEMConfig, frameskip: int,
                      normalization: Normalization) -> np.ndarray:
    """One MPC step's CEM on the simulator: (n, horizon, frameskip * A) normalised mean actions
    for n episodes at `states`, with the noise of model-based planning's MPC iteration `iteration`."""
    n, action_dim = len(states), env.action_dim
    std = normalization.action_std.double().numpy()
    mean = normalization.action_mean.double().numpy()
    gens = [noise_generator(seed, s, iteration) for s in episode_seeds]
    noise = torch.stack([torch.randn((cem.opt_steps, cem.num_samples, cem.horizon, frameskip * action_dim), generator=g)
                         for g in gens]).double().numpy()
    mu = np.zeros((n, cem.horizon, frameskip * action_dim))
    sigma = np.full_like(mu, cem.var_scale)
    for step in range(cem.opt_steps):
        samples = mu[:, None] + sigma[:, None] * noise[:, step]
        samples[:, 0] = mu
        raw = samples.reshape(n, cem.num_samples, cem.horizon * frameskip, action_dim) * std + mean
        finals = simulate_states(
            env_name, env,
            np.repeat(states, cem.num_samples, 0), raw.reshape(-1, cem.horizon * frameskip, action_dim),
            [info for info in env_infos for _ in range(cem.num_samples)],
        ).reshape(n, cem.num_samples, -1)
        costs = state_cost(env_name, finals, goal_states[:, None])
        order = np.argsort(costs, axis=1, kind="stable")[:, : cem.topk]
        elites = np.take_along_axis(samples, order[..., None, None], axis=1)
        mu, sigma = elites.mean(1), elites.std(1, ddof=1)
    return mu


@dataclass
class CeilingConfig:
    cem: CEMConfig
    n_taken_actions: int = 5
    max_iter: int = 50
    frameskip: int = 5


def run_ceiling(env_name: str, env, episodes: EpisodeSet, normalization: Normalization, config: CeilingConfig,
                seed: int, progress: bool = True,
                on_iteration: Callable[[int, PlanningTrace], None] | None = None,
                checkpoint: str | Path | None = None, run_fingerprint: str = "") -> PlanningTrace:
    """MPC-CEM on the true dynamics; `on_iteration(k, trace)` runs after each MPC iteration.

    checkpoint: `mpc_state.npz`, saved after every iteration and continued from as in `run_mpc`
    (environments replayed with the executed actions, fingerprint checked)."""
    started = time.perf_counter()
    n = len(episodes)
    cem = config.cem
    f = config.frameskip
    action_dim = env.action_dim
    steps_per_iteration = config.n_taken_actions * f
    obs, states = env.reset_to(episodes.init_states)
    cur = np.array(states, dtype=np.float64)
    succeeded = np.zeros(n, dtype=bool)
    trace = PlanningTrace()
    success_iter: list[int | None] = [None] * n
    executed: list[np.ndarray] = []
    first_iteration = 0
    saved = load_state(Path(checkpoint), run_fingerprint, CEILING_ARRAYS) if checkpoint is not None else None
    if saved is not None and saved.iterations_done <= config.max_iter:
        # The ceiling always skips succeeded episodes, so the replay steps the same batches.
        replayed = replay(env, episodes.init_states, saved, True, steps_per_iteration)
        if replayed is not None:
            cur = replayed[1].astype(np.float64)
            succeeded = saved.arrays["succeeded"].astype(bool)
            success_iter = decode_success_iter(saved.arrays["success_iter"])
            executed = list(np.split(saved.executed, saved.iterations_done, axis=1))
            trace.success_by_iter = saved.success_by_iter.tolist()
            first_iteration = saved.iterations_done
            trace.resumed_from, trace.earlier_seconds = first_iteration, saved.seconds
            if progress:
                announce_resume("ceiling", checkpoint, trace, config.max_iter)
    std = normalization.action_std.double().numpy()
    mean = normalization.action_mean.double().numpy()
    for k in tqdm(range(first_iteration, config.max_iter), desc="ceiling", disable=not progress, leave=False,
                  initial=first_iteration, total=config.max_iter):
        active = np.flatnonzero(~succeeded)
        if active.size == 0:
            break
        mu = true_dynamics_cem(env_name, env, cur[active], episodes.goal_states[active],
                               [episodes.env_infos[i] for i in active], [episodes.seeds[i] for i in active],
                               k, seed, cem, f, normalization)
        taken = (mu[:, : config.n_taken_actions].reshape(len(active), -1, action_dim) * std + mean)
        for t in range(taken.shape[1]):
            obs, states = env.step(taken[:, t], indices=active)
        cur[active] = states
        step_actions = np.zeros((n, taken.shape[1], action_dim))
        step_actions[active] = taken
        executed.append(step_actions)
        verdict = env.eval_state(episodes.goal_states[active], states)
        for i in active[verdict["success"].astype(bool)]:
            success_iter[i] = k
        succeeded[active] |= verdict["success"].astype(bool)
        trace.success_by_iter.append(succeeded.astype(int).tolist())
        if checkpoint is not None:
            arrays = {"succeeded": succeeded, "success_iter": encode_success_iter(success_iter), "cur_states": cur}
            save_state(Path(checkpoint), MPCState(
                iterations_done=k + 1, arrays=arrays, memo=None, executed=np.concatenate(executed, axis=1),
                success_by_iter=np.array(trace.success_by_iter), latent_mse_by_iter=np.zeros(0),
                planning_loss_by_iter=np.zeros(0), logs=[], first_plan={},
                seconds=trace.earlier_seconds + time.perf_counter() - started), run_fingerprint)
        if on_iteration is not None:
            on_iteration(k, trace)
    while len(trace.success_by_iter) < config.max_iter:
        trace.success_by_iter.append(list(trace.success_by_iter[-1]))
    trace.success_iter = success_iter
    trace.final_states = cur
    return trace
