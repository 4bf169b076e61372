"""Why a quantized planner fails: measurements behind the paper's Insights IV and V.

Success rates say that planning failed, not where. Three measurements on the evaluation episodes
separate the places:

* **Encoder damage** (representation): the quantized encoder's latents of the evaluation frames
  against FP's, as a relative squared error; and a linear probe of the true env state from the
  latents (ridge regression fitted on the calibration episodes' frames, R^2 on the evaluation
  frames). "fp probe on quantized latents" asks whether the state is still where FP put it;
  "refit" asks whether it is still there at all.
* **Cross-evaluation** (objective): at the first MPC step of every episode, FP and the quantized
  model each plan (CEM, same noise); each plan is then scored by both models' planning cost and by
  the simulator (the plan executed open loop from the episode's start: distance to the goal state,
  and success). If the quantized model ranks FP's plan below its own while the simulator ranks it
  above, the quantized objective, not the search, is what fails.
* **Ranking** (objective): over random candidate plans of every episode, whether the quantized
  model orders them as FP does and as the simulator does (`wmquant.diagnose.ranking`).
* The planner's cost after every optimisation step is logged by every planning run (`mpc_logs`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..planning.cem import noise_generator
from ..planning.mpc import _to_env_actions
from .ranking import candidate_ranking

#: Ridge penalty of the linear probe, relative to the mean eigenvalue of the features' Gram matrix
#: (scale-free: a latent space twice as large gets the same probe).
PROBE_RIDGE = 1e-3


def pooled_features(z: dict[str, torch.Tensor]) -> np.ndarray:
    """(P, E): a frame's visual latent averaged over its patches (the probe's input)."""
    visual = z["visual"]  # (P, 1, N, E)
    return visual.mean(dim=(1, 2)).double().cpu().numpy()


def relative_latent_error(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Per frame ||other - reference||^2 / ||reference||^2, for the visual and proprio latents."""
    out = {}
    for key in ("visual", "proprio"):
        ref, got = reference[key].double(), other[key].double()
        dims = tuple(range(1, ref.ndim))
        out[key] = ((got - ref).pow(2).sum(dim=dims) / ref.pow(2).sum(dim=dims).clamp_min(1e-12)).cpu().numpy()
    return out


class LinearProbe:
    """Ridge regression from features to states, with both standardised on the training set."""

    def __init__(self, features: np.ndarray, targets: np.ndarray, ridge: float = PROBE_RIDGE) -> None:
        self.mean_x, self.std_x = features.mean(axis=0), features.std(axis=0) + 1e-12
        self.mean_y, self.std_y = targets.mean(axis=0), targets.std(axis=0) + 1e-12
        x = (features - self.mean_x) / self.std_x
        y = (targets - self.mean_y) / self.std_y
        gram = x.T @ x
        penalty = ridge * np.trace(gram) / gram.shape[0]
        self.weights = np.linalg.solve(gram + penalty * np.eye(gram.shape[0]), x.T @ y)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean_x) / self.std_x) @ self.weights * self.std_y + self.mean_y

    def r2(self, features: np.ndarray, targets: np.ndarray) -> float:
        """Coefficient of determination, averaged over the state's dimensions."""
        residual = ((targets - self.predict(features)) ** 2).sum(axis=0)
        total = ((targets - targets.mean(axis=0)) ** 2).sum(axis=0)
        return float(np.mean(1.0 - residual / np.maximum(total, 1e-12)))


def _frames(episodes) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every episode's start and goal observation (2E frames: visual (2E, H, W, 3), proprio
    (2E, P)) and the env states they show."""
    obs = {k: np.concatenate([episodes.obs_0[k], episodes.obs_g[k]]) for k in episodes.obs_0}
    return obs, np.concatenate([episodes.init_states, episodes.goal_states])


def encoder_damage(fp_engine, q_engine, calibration, evaluation) -> dict[str, Any]:
    """Latent error of the quantized encoder on the evaluation frames, and linear probes of the
    true state fitted on the calibration frames."""
    train_obs, train_states = _frames(calibration)
    test_obs, test_states = _frames(evaluation)
    z_fp_train, z_q_train = fp_engine.encode(train_obs), q_engine.encode(train_obs)
    z_fp_test, z_q_test = fp_engine.encode(test_obs), q_engine.encode(test_obs)
    errors = relative_latent_error(z_fp_test, z_q_test)
    fp_probe = LinearProbe(pooled_features(z_fp_train), train_states)
    q_probe = LinearProbe(pooled_features(z_q_train), train_states)
    return {
        "relative_latent_error": {key: float(np.mean(value)) for key, value in errors.items()},
        "relative_latent_error_per_frame": {key: value.tolist() for key, value in errors.items()},
        "probe_r2": {
            "fp": fp_probe.r2(pooled_features(z_fp_test), test_states),
            "fp_probe_on_quantized": fp_probe.r2(pooled_features(z_q_test), test_states),
            "quantized_refit": q_probe.r2(pooled_features(z_q_test), test_states),
        },
        "probe_frames": {"train": int(len(train_states)), "test": int(len(test_states))},
    }


def plan_cost(engine, z0: dict[str, torch.Tensor], goal: dict[str, torch.Tensor], actions: torch.Tensor) -> np.ndarray:
    """(E,) the planning cost a model gives one action sequence per episode."""
    return engine.sample_costs(z0, goal, actions[:, None].to(engine.device))[:, 0].cpu().numpy()


def score_plans(scorers: dict[str, tuple], plans: dict[str, torch.Tensor], env, episodes, frameskip: int,
                action_engine, outcomes: bool = False) -> dict[str, list]:
    """Every plan scored by every model's planning cost and by the simulator (executed open loop from
    the episode's start). `scorers`: name -> (engine, start latents, goal latents); `plans`: name ->
    (E, horizon, frameskip * A) normalised actions; `action_engine` un-normalises them.
    `outcomes`: also each scorer's cost of what the simulator reached (its encoder on the true frames
    at every model step, no prediction): the cost the model would give with a perfect predictor."""
    per_episode: dict[str, list] = {}
    for scorer, (engine, z0, zg) in scorers.items():
        for planned, actions in plans.items():
            per_episode[f"cost_under_{scorer}_of_{planned}_plan"] = plan_cost(engine, z0, zg, actions).tolist()
    for planned, actions in plans.items():
        env_actions = _to_env_actions(actions, frameskip, action_engine)
        obses, states = env.rollout(episodes.init_states, env_actions)
        if outcomes:
            reached = {key: value[:, ::frameskip] for key, value in obses.items()}
            for scorer, (engine, _, zg) in scorers.items():
                visual, proprio = engine.objective.terms(engine.encode(reached), zg)
                per_episode[f"cost_under_{scorer}_of_{planned}_outcome"] = (visual + engine.objective.alpha * proprio).cpu().tolist()
                # the two terms apart: which one decides a ranking
                per_episode[f"visual_cost_under_{scorer}_of_{planned}_outcome"] = visual.cpu().tolist()
                per_episode[f"proprio_cost_under_{scorer}_of_{planned}_outcome"] = proprio.cpu().tolist()
        verdict = env.eval_state(episodes.goal_states, states[:, -1])
        per_episode[f"sim_state_dist_of_{planned}_plan"] = np.asarray(verdict["state_dist"], float).tolist()
        per_episode[f"sim_success_of_{planned}_plan"] = np.asarray(verdict["success"], int).tolist()
    return per_episode


def cross_evaluate(fp_engine, q_engine, planner, env, episodes, frameskip: int, seed: int) -> dict[str, Any]:
    """Both models plan the first MPC step of every episode; every plan is scored by both models
    and by the simulator. Returns per-episode arrays and their summary."""
    z = {name: (engine, engine.encode(episodes.obs_0), engine.encode(episodes.obs_g))
         for name, engine in (("fp", fp_engine), ("quantized", q_engine))}
    plans = {}
    for name, (engine, z0, zg) in z.items():
        generators = [noise_generator(seed, s, 0) for s in episodes.seeds]  # the same noise for both
        plans[name] = planner.plan(engine, z0, zg, generators).actions
    per_episode = score_plans(z, plans, env, episodes, frameskip, fp_engine)
    arrays = {k: np.asarray(v, float) for k, v in per_episode.items()}
    fp_truly_better = arrays["sim_state_dist_of_fp_plan"] < arrays["sim_state_dist_of_quantized_plan"]
    q_prefers_own = arrays["cost_under_quantized_of_quantized_plan"] < arrays["cost_under_quantized_of_fp_plan"]
    summary = {key: float(value.mean()) for key, value in arrays.items()}
    summary.update({
        # the quantized objective ranks its own plan first although FP's ends nearer the goal
        "quantized_objective_misranks": float(np.mean(fp_truly_better & q_prefers_own)),
        # how much worse FP's model finds the quantized plan than its own
        "fp_cost_excess_of_quantized_plan": float(np.mean(arrays["cost_under_fp_of_quantized_plan"]
                                                          - arrays["cost_under_fp_of_fp_plan"])),
    })
    return {"summary": summary, "per_episode": per_episode}


def measure_mechanisms(session, fp_model) -> dict[str, Any]:
    """Encoder damage and cross-evaluation of `session.model` (quantized) against `fp_model` (its
    float copy, taken before quantization), on the session's evaluation and calibration episodes."""
    fp_engine = session.engine_for(fp_model)
    evaluation, env = session.episodes("evaluation")
    calibration, calib_env = session.episodes("calibration")
    calib_env.close()
    try:
        with torch.no_grad():
            damage = encoder_damage(fp_engine, session.engine, calibration, evaluation)
            planner = session.planner()
            crossed = cross_evaluate(fp_engine, session.engine, planner, env, evaluation,
                                     session.bundle.frameskip, int(session.cfg.seed))
            ranking = candidate_ranking(fp_engine, session.engine, env, evaluation, session.bundle.frameskip,
                                        planner.config.horizon, planner.action_dim,
                                        var_scale=planner.config.var_scale, seed=int(session.cfg.seed))
    finally:
        env.close()
    return {"encoder": damage, "cross_evaluation": crossed, "ranking": ranking, "episodes": list(evaluation.seeds)}
