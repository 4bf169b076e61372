"""Does a quantized model rank candidate plans as FP does, and as the simulator does?

CEM keeps the candidates its model scores lowest, so a planner fails when its model orders the
candidates wrongly, whatever its latent error. For every evaluation episode this draws `candidates`
action sequences from CEM's first sampling distribution (normal, mean 0, std `var_scale`, in
normalised action space), scores each by the FP model's and the quantized model's planning cost,
and executes each open loop in the simulator from the episode's start (final distance to the goal
state). Per episode:

* Spearman correlations of the costs: quantized against FP, quantized against the simulator's
  distance, FP against the simulator's distance (the FP model's own ceiling);
* the overlap of the two models' top 10 % (CEM's elites at the default 300 / 30);
* the simulator's distance reached by each model's best-scored candidate.

The summary gives medians over episodes of the correlations and means of the rest.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from ..planning.mpc import _to_env_actions

#: The share of candidates counted as elites (CEM's top 30 of 300).
ELITE_FRACTION = 0.1


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho of two score vectors; 0 where one is constant (no order to agree with)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def _elites(costs: np.ndarray, count: int) -> set[int]:
    return set(np.argsort(costs, kind="stable")[:count].tolist())


def candidate_ranking(fp_engine, q_engine, env, episodes, frameskip: int, horizon: int, action_width: int,
                      candidates: int = 64, var_scale: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """Per-episode ranking agreement of FP, the quantized model and the simulator over random
    candidate plans (see the module docstring). `episodes`: an EpisodeSet of E episodes; `env`: a
    batch env of E rows. Returns {"summary", "per_episode", "candidates"}."""
    if candidates < 2:
        raise ValueError(f"candidates must be at least 2 to rank, got {candidates}")
    count = len(episodes.seeds)
    gen = torch.Generator().manual_seed(seed)
    actions = torch.randn(count, candidates, horizon, action_width, generator=gen) * var_scale
    costs = {}
    with torch.no_grad():
        for name, engine in (("fp", fp_engine), ("quantized", q_engine)):
            z0, zg = engine.encode(episodes.obs_0), engine.encode(episodes.obs_g)
            costs[name] = engine.sample_costs(z0, zg, actions.to(engine.device)).double().cpu().numpy()  # (E, C)
    distance = np.empty((count, candidates))
    for c in range(candidates):
        _, states = env.rollout(episodes.init_states, _to_env_actions(actions[:, c], frameskip, fp_engine))
        distance[:, c] = np.asarray(env.eval_state(episodes.goal_states, states[:, -1])["state_dist"], float)
    elite_count = max(1, round(ELITE_FRACTION * candidates))
    rows = np.arange(count)
    per_episode = {
        "rho_quantized_fp": [_spearman(costs["quantized"][e], costs["fp"][e]) for e in rows],
        "rho_quantized_simulator": [_spearman(costs["quantized"][e], distance[e]) for e in rows],
        "rho_fp_simulator": [_spearman(costs["fp"][e], distance[e]) for e in rows],
        "elite_overlap": [len(_elites(costs["quantized"][e], elite_count) & _elites(costs["fp"][e], elite_count))
                          / elite_count for e in rows],
        "sim_distance_of_quantized_choice": distance[rows, costs["quantized"].argmin(axis=1)].tolist(),
        "sim_distance_of_fp_choice": distance[rows, costs["fp"].argmin(axis=1)].tolist(),
        "sim_distance_of_best_candidate": distance.min(axis=1).tolist(),
    }
    summary = {f"median_{key}": float(np.median(per_episode[key])) for key in per_episode if key.startswith("rho")}
    summary.update({f"mean_{key}": float(np.mean(per_episode[key])) for key in per_episode if not key.startswith("rho")})
    return {"summary": summary, "per_episode": per_episode, "candidates": candidates, "elites": elite_count}
