"""Does a world model's planning fail in its objective or in its search?

At the first MPC step of every episode, two plans are made with the same CEM budget and the same
noise: one by the world model (its latent cost to the goal), one by the simulator (the planning
ceiling's true dynamics and Euclidean state cost). Both are then scored by the model's cost and by
the simulator (executed open loop from the episode's start for the whole horizon, which is where
the goal lies). On the episodes where the simulator's plan reaches the goal and the model's does
not, the model's cost decides the verdict:

* it ranks the simulator's plan below (better than) its own: the objective was right and CEM did
  not find the plan; more samples or optimisation steps would help (a *search* failure);
* it ranks its own failing plan better: the model's prediction or its latent metric is wrong, and
  no planner budget fixes that (an *objective* failure). A model must change.

An objective failure is split further by the cost of what the simulator actually reached (the
encoder on the true frames at every model step, i.e. the cost under a perfect predictor): if that
cost also prefers the model's failing plan, the latent *metric* is at fault (the encoder does not
see the difference the success test sees); if it prefers the simulator's plan, the *prediction* is.
A metric failure whose visual term alone prefers the simulator's outcome is decided by the proprio
term (for PushT the agent's velocity, which the success test ignores).

A prediction failure has two sides, and the summary measures both (medians over those episodes):
how much worse the model predicts the simulator's working plan to end than it truly ends (its
predicted cost over the cost of the true outcome; above 1: the model does not believe the plan
that works), and how much better it predicts its own plan to end (the true outcome's cost over the
predicted one; above 1: it believes a plan that fails).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..planning.ceiling import true_dynamics_cem
from ..planning.cem import noise_generator
from .mechanisms import score_plans


def search_or_objective(session, episodes, env) -> dict[str, Any]:
    """Plans of the model and of the simulator at the first MPC step, each scored by the model's
    cost and by the simulator; the per-episode arrays and a summary (see the module docstring).
    `session` is a PlanningSession with a CEM sub-planner; `episodes` its EpisodeSet and `env` their
    BatchEnv."""
    if session.cfg.planner.sub_planner.name != "cem":
        raise ConfigError(f"planner.sub_planner.name={session.cfg.planner.sub_planner.name!r}: the search-or-objective "
                          "diagnosis compares CEM plans; set planner.sub_planner.name=cem")
    planner = session.planner()
    engine, frameskip, seed = session.engine, session.bundle.frameskip, int(session.cfg.seed)
    with torch.no_grad():
        z0, zg = engine.encode(episodes.obs_0), engine.encode(episodes.obs_g)
        generators = [noise_generator(seed, s, 0) for s in episodes.seeds]
        model_plan = planner.plan(engine, z0, zg, generators).actions
    _, start_states = env.reset_to(episodes.init_states)
    simulator_plan = true_dynamics_cem(
        episodes.env, env, np.asarray(start_states, dtype=np.float64), episodes.goal_states,
        list(episodes.env_infos), list(episodes.seeds), 0, seed, planner.config, frameskip,
        session.bundle.normalization)
    plans = {"model": model_plan.detach().cpu().float(),
             "simulator": torch.as_tensor(simulator_plan, dtype=torch.float32)}
    with torch.no_grad():
        per_episode = score_plans({"model": (engine, z0, zg)}, plans, env, episodes, frameskip, engine, outcomes=True)
    return {"per_episode": per_episode, "summary": summarise(per_episode), "episodes": list(episodes.seeds),
            "plans": {name: actions.tolist() for name, actions in plans.items()}}


def verdicts(per_episode: dict[str, list]) -> dict[str, np.ndarray]:
    """Boolean masks over the episodes: `contested` (only the simulator's plan succeeds), and of those
    `search`, `objective`, and of the objective failures `metric` and `prediction` (module docstring)."""
    model_ok = np.asarray(per_episode["sim_success_of_model_plan"], bool)
    simulator_ok = np.asarray(per_episode["sim_success_of_simulator_plan"], bool)
    own = np.asarray(per_episode["cost_under_model_of_model_plan"], float)
    other = np.asarray(per_episode["cost_under_model_of_simulator_plan"], float)
    contested = simulator_ok & ~model_ok
    search = contested & (other < own)
    objective = contested & ~search
    # the cost of the true outcomes: does the encoder's metric prefer the simulator's plan once the
    # prediction is taken out?
    metric = objective & (np.asarray(per_episode["cost_under_model_of_simulator_outcome"], float)
                          >= np.asarray(per_episode["cost_under_model_of_model_outcome"], float))
    return {"contested": contested, "search": search, "objective": objective, "metric": metric,
            "prediction": objective & ~metric}


def summarise(per_episode: dict[str, list]) -> dict[str, Any]:
    """Success of both plans, and the verdict on the episodes that only the simulator's plan solves."""
    model_ok = np.asarray(per_episode["sim_success_of_model_plan"], bool)
    simulator_ok = np.asarray(per_episode["sim_success_of_simulator_plan"], bool)
    own = np.asarray(per_episode["cost_under_model_of_model_plan"], float)
    other = np.asarray(per_episode["cost_under_model_of_simulator_plan"], float)
    masks = verdicts(per_episode)
    contested, search, objective, metric, prediction = (
        masks[k] for k in ("contested", "search", "objective", "metric", "prediction"))
    return {
        "episodes": int(len(model_ok)),
        "success_of_model_plan": float(model_ok.mean()),
        "success_of_simulator_plan": float(simulator_ok.mean()),
        "only_simulator_solves": int(contested.sum()),
        # of those, the model's cost prefers the simulator's plan: CEM missed a plan the model likes
        "search_failures": int(search.sum()),
        # of those, the model's cost prefers its own plan, which fails in the simulator
        "objective_failures": int(objective.sum()),
        # of the objective failures: the true outcomes' cost prefers the model's plan too (metric), or
        # the simulator's (the prediction misleads)
        "metric_failures": int(metric.sum()),
        "prediction_failures": int(prediction.sum()),
        # of the metric failures: the visual term alone prefers the simulator's outcome, so the
        # proprio term (alpha * proprio MSE) decides against it
        "metric_failures_decided_by_proprio": int((metric & (
            np.asarray(per_episode["visual_cost_under_model_of_simulator_outcome"], float)
            < np.asarray(per_episode["visual_cost_under_model_of_model_outcome"], float))).sum())
        if "visual_cost_under_model_of_model_outcome" in per_episode else None,  # reports before the split lack it
        # the model's cost of the simulator's plan over that of its own plan (median, contested episodes)
        "cost_ratio_simulator_over_model_plan_median": _median_ratio(other, own, contested),
        # the two sides of the prediction failures: the simulator's plan predicted / its true outcome,
        # and the model's own plan's true outcome / predicted
        "prediction_failures_simulator_plan_predicted_over_true_median": _median_ratio(
            other, per_episode["cost_under_model_of_simulator_outcome"], prediction),
        "prediction_failures_model_plan_true_over_predicted_median": _median_ratio(
            per_episode["cost_under_model_of_model_outcome"], own, prediction),
    }


def _median_ratio(numerator, denominator, where: np.ndarray) -> float | None:
    if not where.any():
        return None
    numerator, denominator = np.asarray(numerator, float)[where], np.asarray(denominator, float)[where]
    return float(np.median(numerator / np.maximum(denominator, 1e-12)))


def search_or_objective_table(report: dict[str, Any], groups: dict[str, np.ndarray] | None = None) -> str:
    """Markdown: the summary over all episodes, and over each named subset (e.g. the episodes whose
    goal needs the block pushed)."""
    subsets = {"all": np.ones(len(report["episodes"]), bool), **(groups or {})}
    lines = ["| episodes | n | success, model's plan | success, simulator's plan | only the simulator's plan succeeds | "
             "of those: search failures | objective failures (prediction / metric) | model cost of simulator's plan / own (median) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, mask in subsets.items():
        if not mask.any():
            continue
        part = summarise({k: list(np.asarray(v)[mask]) for k, v in report["per_episode"].items()})
        ratio = part["cost_ratio_simulator_over_model_plan_median"]
        decided = part["metric_failures_decided_by_proprio"]
        by_proprio = "" if decided is None else f", {decided} decided by the proprio term"
        lines.append(f"| {name} | {part['episodes']} | {part['success_of_model_plan']:.2f} | "
                     f"{part['success_of_simulator_plan']:.2f} | {part['only_simulator_solves']} | "
                     f"{part['search_failures']} | {part['objective_failures']} ({part['prediction_failures']} / "
                     f"{part['metric_failures']}{by_proprio}) | "
                     f"{'—' if ratio is None else f'{ratio:.2f}'} |")
    return "\n".join(lines)
