"""Model-predictive control around CEM or GD (spec 5.8), batched over episodes.

Each MPC iteration plans `horizon` model steps from the current observation, executes the first
`n_taken_actions` of them (each is `frameskip` raw env actions) in the real environment, and checks
success. Success is cumulative: an episode that succeeded keeps its success and is scored at the step
where it succeeded, as upstream does. So planning for it can stop (`skip_succeeded`) without changing
any recorded quantity; the test suite checks that both settings give identical results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from .cem import noise_generator
from .checkpoint import (EPISODE_ARRAYS, MPCState, announce_resume, decode_success_iter, encode_success_iter, load_state, replay,
                         save_state)
from .engine import Engine
from .episodes import EpisodeSet


@dataclass(frozen=True)
class MPCConfig:
    n_taken_actions: int = 5
    max_iter: int = 50
    skip_succeeded: bool = True

    def __post_init__(self) -> None:
        for name in ("n_taken_actions", "max_iter"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"planner.{name} must be a positive integer, got {value!r}")


@dataclass
class PlanningTrace:
    """What an MPC run measured. Lists are indexed by MPC iteration k (k = 0 is the first plan)."""

    success_by_iter: list[list[int]] = field(default_factory=list)  # [k][episode] 0/1, cumulative
    latent_mse_by_iter: list[float] = field(default_factory=list)
    planning_loss_by_iter: list[float] = field(default_factory=list)
    logs: list[dict[str, Any]] = field(default_factory=list)  # upstream logs.json keys, one line per iteration
    success_iter: list[int | None] = field(default_factory=list)  # first successful iteration per episode
    final_states: np.ndarray | None = None
    executed_actions: np.ndarray | None = None  # raw env actions (E, steps, A)
    first_plan: dict[str, Any] = field(default_factory=dict)  # for the rollout grid
    resumed_from: int | None = None  # first MPC iteration of this attempt, when it continued a checkpoint
    earlier_seconds: float = 0.0     # planning time of the earlier attempts it continued

    @property
    def success_rate_by_iter(self) -> list[float]:
        return [float(np.mean(row)) for row in self.success_by_iter]


def _to_env_actions(actions: torch.Tensor, frameskip: int, engine: Engine) -> np.ndarray:
    """Normalised model actions (E, h, f*A) -> raw env actions (E, h*f, A)."""
    episodes, steps, width = actions.shape
    raw = actions.reshape(episodes, steps * frameskip, width // frameskip)
    return engine.normalization.denormalize_actions(raw.float()).double().numpy()


def run_mpc(
    engine: Engine,
    planner,
    env,
    episodes: EpisodeSet,
    config: MPCConfig,
    frameskip: int,
    seed: int,
    progress: bool = True,
    desc: str = "MPC",
    plot_episodes: int = 0,
    on_iteration: Callable[[int, PlanningTrace], None] | None = None,
    checkpoint: str | Path | None = None,
    run_fingerprint: str = "",
) -> PlanningTrace:
    """Plan and execute in `env` (a BatchEnv with one environment per episode, layouts already set).

    checkpoint: a file (`mpc_state.npz`) saved after every MPC iteration; when it exists with the
    same `run_fingerprint`, planning continues after its last iteration (see .checkpoint)."""
    started = time.perf_counter()
    n = len(episodes)
    n_taken = config.n_taken_actions
    horizon = planner.config.horizon
    if n_taken > horizon:
        raise ConfigError(f"planner.n_taken_actions={n_taken} exceeds the horizon {horizon}")
    obs, states = env.reset_to(episodes.init_states)
    cur_obs = {k: np.array(v) for k, v in obs.items()}
    cur_states = np.array(states)
    z_goal = engine.encode(episodes.obs_g)
    succeeded = np.zeros(n, dtype=bool)
    success_iter: list[int | None] = [None] * n
    latent_mse = np.full(n, np.nan)
    plan_loss = np.full(n, np.nan)
    visual_dist = np.full(n, np.nan)
    proprio_dist = np.full(n, np.nan)
    state_dist = np.full(n, np.nan)
    div_visual = np.zeros(n)
    div_proprio = np.zeros(n)
    final_states = cur_states.copy()
    memo: torch.Tensor | None = None
    executed: list[np.ndarray] = []
    zero_env_action = np.zeros(env.action_dim)
    trace = PlanningTrace()
    first_iteration, earlier_seconds = 0, 0.0
    steps_per_iteration = n_taken * frameskip
    saved = load_state(Path(checkpoint), run_fingerprint) if checkpoint is not None else None
    if saved is not None and saved.iterations_done <= config.max_iter:
        # None: the env did not reproduce its states, and the run starts over (never from a wrong state)
        replayed = replay(env, episodes.init_states, saved, config.skip_succeeded, steps_per_iteration)
        if replayed is not None:
            cur_obs, cur_states = replayed
            (succeeded, success_iter_array, latent_mse, plan_loss, visual_dist, proprio_dist, state_dist,
             div_visual, div_proprio, final_states) = (saved.arrays[k].copy() for k in EPISODE_ARRAYS[:-1])
            succeeded = succeeded.astype(bool)
            success_iter = decode_success_iter(success_iter_array)
            memo = None if saved.memo is None else torch.from_numpy(saved.memo)
            executed = list(np.split(saved.executed, saved.iterations_done, axis=1)) if saved.iterations_done else []
            trace.success_by_iter = saved.success_by_iter.tolist()
            trace.latent_mse_by_iter = saved.latent_mse_by_iter.tolist()
            trace.planning_loss_by_iter = saved.planning_loss_by_iter.tolist()
            trace.logs = list(saved.logs)
            if saved.first_plan:
                trace.first_plan = {**saved.first_plan, "episodes": saved.first_plan["episodes"].tolist(),
                                    "predicted_visual": torch.from_numpy(saved.first_plan["predicted_visual"])}
            first_iteration, earlier_seconds = saved.iterations_done, saved.seconds
            trace.resumed_from, trace.earlier_seconds = first_iteration, earlier_seconds
            if progress:
                announce_resume(desc, checkpoint, trace, config.max_iter)

    def save(k: int) -> None:
        arrays = dict(zip(EPISODE_ARRAYS, (
            succeeded, encode_success_iter(success_iter), latent_mse, plan_loss,
            visual_dist, proprio_dist, state_dist, div_visual, div_proprio, final_states, cur_states)))
        first = {k: (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in trace.first_plan.items()}
        save_state(Path(checkpoint), MPCState(
            iterations_done=k + 1, arrays=arrays, memo=None if memo is None else memo.numpy(),
            executed=np.concatenate(executed, axis=1), success_by_iter=np.array(trace.success_by_iter),
            latent_mse_by_iter=np.array(trace.latent_mse_by_iter),
            planning_loss_by_iter=np.array(trace.planning_loss_by_iter), logs=trace.logs, first_plan=first,
            seconds=earlier_seconds + time.perf_counter() - started), run_fingerprint)

    # a manual bar (not an iterating one), so that iterations skipped at the end can be counted
    bar = tqdm(desc=desc, disable=not progress, leave=False, dynamic_ncols=True, initial=first_iteration,
               total=config.max_iter)
    for k in range(first_iteration, config.max_iter):
        active = np.flatnonzero(~succeeded) if config.skip_succeeded else np.arange(n)
        if active.size == 0:
            # every episode has succeeded: the remaining iterations have nothing to plan, and the
            # bar counts them as done, so that it ends at 100 %
            bar.update(config.max_iter - k)
            bar.set_postfix(success="1.00 (all)")
            break
        z0 = engine.encode({key: v[active] for key, v in cur_obs.items()})
        goal = {key: v[active] for key, v in z_goal.items()}
        generators = [noise_generator(seed, episodes.seeds[i], k) for i in active]
        carried = None if memo is None else memo[active]
        plan = planner.plan(engine, z0, goal, generators, carried)
        actions = plan.actions  # (Ea, H, f*A)
        memo_full = torch.zeros(n, horizon - n_taken, actions.shape[-1])
        memo_full[active] = actions[:, n_taken:]
        memo = memo_full

        predicted = engine.rollout(z0, actions.to(engine.device))
        visual_term, proprio_term = engine.objective.terms(predicted, goal)
        cost = (visual_term + engine.objective.alpha * proprio_term).cpu().numpy()
        taken = _to_env_actions(actions[:, :n_taken], frameskip, engine)  # (Ea, n_taken*f, A)
        already = succeeded[active]
        taken[already] = zero_env_action  # upstream: the env stays still after success

        frames = [cur_obs["visual"][active[:plot_episodes]]] if k == 0 and plot_episodes else None
        for t in range(taken.shape[1]):
            obs, states = env.step(taken[:, t], indices=active)
            if frames is not None and (t + 1) % frameskip == 0:
                frames.append(obs["visual"][: min(plot_episodes, len(active))])
        for key in cur_obs:
            cur_obs[key][active] = obs[key]
        cur_states[active] = states
        step_actions = np.zeros((n, taken.shape[1], env.action_dim))
        step_actions[active] = taken
        executed.append(step_actions)

        verdict = env.eval_state(episodes.goal_states[active], states)
        newly = verdict["success"].astype(bool) & ~already
        # Quantities of an episode are frozen at its success step (upstream scores it there), so
        # planning or not planning a finished episode changes nothing that is recorded.
        update = active[~already]
        fresh = torch.as_tensor(~already)
        z_final = engine.encode({key: v[update] for key, v in cur_obs.items()})
        latent_mse[update] = visual_term.cpu().numpy()[~already]
        plan_loss[update] = cost[~already]
        state_dist[update] = verdict["state_dist"][~already]
        final_states[update] = states[~already]
        visual_dist[update] = np.abs(
            cur_obs["visual"][update].astype(np.int16) - episodes.obs_g["visual"][update].astype(np.int16)
        ).mean(axis=(1, 2, 3))
        proprio_dist[update] = np.abs(cur_obs["proprio"][update] - episodes.obs_g["proprio"][update]).mean(axis=1)
        div_visual[update] = (z_final["visual"][:, 0] - predicted["visual"][fresh, -1]).pow(2).sum(dim=(1, 2)).cpu().numpy()
        div_proprio[update] = (z_final["proprio"][:, 0] - predicted["proprio"][fresh, -1]).pow(2).sum(dim=1).cpu().numpy()
        for i in active[newly]:
            success_iter[i] = k
        succeeded[active] |= verdict["success"].astype(bool)

        trace.success_by_iter.append(succeeded.astype(int).tolist())
        trace.latent_mse_by_iter.append(float(np.nanmean(latent_mse)))
        trace.planning_loss_by_iter.append(float(np.nanmean(plan_loss)))
        trace.logs.append(
            {
                "mpc/success_rate": float(succeeded.mean()),
                "mpc/mean_state_dist": float(np.nanmean(state_dist)),
                "mpc/mean_visual_dist": float(np.nanmean(visual_dist)),
                "mpc/mean_proprio_dist": float(np.nanmean(proprio_dist)),
                # Frobenius norms over the whole batch, as upstream (not means, despite the names).
                "mpc/mean_div_visual_emb": float(np.sqrt(div_visual.sum())),
                "mpc/mean_div_proprio_emb": float(np.sqrt(div_proprio.sum())),
                # the planner's cost after each of its optimisation steps, averaged over the
                # episodes it planned (does the optimisation still descend, or has it stalled?)
                "mpc/planning_loss_by_opt_step": ([] if plan.step_costs is None
                                                  else [float(v) for v in plan.step_costs.mean(dim=0)]),
                "step": k + 1,
            }
        )
        if k == 0 and plot_episodes:
            shown = min(plot_episodes, len(active))
            trace.first_plan = {
                "episodes": active[:shown].tolist(),
                "env_frames": np.stack(frames, axis=1),  # (shown, n_taken+1, H, W, 3)
                "predicted_visual": predicted["visual"][:shown].cpu(),  # (shown, H+1, N, E)
                "goal_frames": episodes.obs_g["visual"][active[:shown]],
            }
        bar.set_postfix(success=f"{succeeded.mean():.2f}", refresh=False)
        bar.update(1)
        if checkpoint is not None:
            save(k)
        if on_iteration is not None:
            on_iteration(k, trace)

    # Success is cumulative: iterations after everyone succeeded repeat the last row.
    while len(trace.success_by_iter) < config.max_iter and trace.success_by_iter:
        trace.success_by_iter.append(list(trace.success_by_iter[-1]))
        trace.latent_mse_by_iter.append(trace.latent_mse_by_iter[-1])
        trace.planning_loss_by_iter.append(trace.planning_loss_by_iter[-1])
    trace.success_iter = success_iter
    trace.final_states = final_states
    trace.executed_actions = np.concatenate(executed, axis=1) if executed else None
    bar.close()
    return trace
