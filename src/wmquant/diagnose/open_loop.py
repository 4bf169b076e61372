"""Open-loop error of a world model over the planning horizon.

For each planning episode (a start state and the goal_H x frameskip true actions that lead to its
goal), the model rolls its latent forward from the start frame under those actions, and the env
plays them. At every model step k the predicted visual latent is compared with the encoding of the
frame the env reached: their MSE is the model's error. The MSE between the start's latent and the
reached frame's latent is how far the true latent moved, so error / moved says whether the model
tracks the motion (well below 1) or loses it (near or above 1: the prediction is no closer to the
truth than standing still). Planning by latent MSE to the goal needs the former at step goal_H.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..envs import env_function


@torch.no_grad()
def open_loop_error(session, episodes, env) -> dict[str, Any]:
    """Per model step k = 1..goal_H: mean and median over episodes of the visual latent MSE between
    prediction and truth, of the truth's latent MSE to the start, and their ratio; proprio MSE too.
    `session` is a PlanningSession, `episodes` an EpisodeSet with true actions (dataset goals), `env`
    its BatchEnv."""
    if episodes.gt_actions is None:
        raise ValueError("open-loop error needs episodes with true actions (goal_source=dset)")
    engine, frameskip = session.engine, session.bundle.frameskip
    raw = torch.as_tensor(episodes.gt_actions, dtype=torch.float32)  # (n, goal_H * frameskip, A)
    n, steps, action_dim = raw.shape
    horizon = steps // frameskip
    actions = engine.normalization.normalize_actions(raw).reshape(n, horizon, frameskip * action_dim)
    z0 = engine.encode(episodes.obs_0)
    predicted = engine.rollout(z0, actions)  # (n, horizon + 1, ...), index 0 = the start
    obses, _ = env.rollout(episodes.init_states, episodes.gt_actions)
    reached = {key: value[:, ::frameskip] for key, value in obses.items()}  # (n, horizon + 1, ...)
    truth = engine.encode(reached)
    start = truth["visual"][:, :1]
    groups = {"by_step": np.ones(n, dtype=bool)}
    needs_push = env_function(episodes.env, "needs_push")
    if needs_push is not None:
        # a goal whose block barely moves is near the start in latent space too: the ratio there says
        # little, so the episodes that need the block pushed are also reported alone
        groups["by_step_needs_push"] = needs_push(episodes.init_states, episodes.goal_states)
    report: dict[str, Any] = {"episodes": n, "horizon": horizon, "frameskip": frameskip}
    for key, mask in groups.items():
        if key != "by_step":
            report[key.replace("by_step_", "episodes_")] = int(mask.sum())
        if not mask.any():
            report[key] = []
            continue
        rows = []
        for k in range(1, horizon + 1):
            error = (predicted["visual"][mask, k] - truth["visual"][mask, k]).pow(2).flatten(1).mean(1).cpu().numpy()
            moved = (truth["visual"][mask, k] - start[mask, 0]).pow(2).flatten(1).mean(1).cpu().numpy()
            proprio = (predicted["proprio"][mask, k] - truth["proprio"][mask, k]).pow(2).flatten(1).mean(1).cpu().numpy()
            ratio = error / np.maximum(moved, 1e-12)
            rows.append({
                "step": k,
                "env_steps": k * frameskip,
                "visual_mse_mean": float(error.mean()),
                "visual_mse_median": float(np.median(error)),
                "moved_mse_mean": float(moved.mean()),
                "error_over_moved_median": float(np.median(ratio)),
                "error_over_moved_above_1": float((ratio >= 1.0).mean()),
                "proprio_mse_mean": float(proprio.mean()),
            })
        report[key] = rows
    return report


def open_loop_table(report: dict[str, Any]) -> str:
    lines = []
    sections = [("by_step", f"all {report['episodes']} episodes")]
    if "by_step_needs_push" in report:
        sections.append(("by_step_needs_push", f"the {report['episodes_needs_push']} episodes whose goal needs the block pushed (>= 5 px)"))
    for key, title in sections:
        lines += [
            f"open-loop error over {report['horizon']} model steps, {title}",
            "| step (env steps) | visual MSE mean | median | true motion MSE mean | error / motion, median | share >= 1 | proprio MSE |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in report[key]:
            lines.append(
                f"| {row['step']} ({row['env_steps']}) | {row['visual_mse_mean']:.4f} | {row['visual_mse_median']:.4f} | "
                f"{row['moved_mse_mean']:.4f} | {row['error_over_moved_median']:.2f} | {row['error_over_moved_above_1']:.2f} | "
                f"{row['proprio_mse_mean']:.4f} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip()
