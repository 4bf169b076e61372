"""`wmquant diagnose landscape|rollout|objective`: a frozen encoder's goal-cost landscape, a model's
open-loop error over the planning horizon, or whether its planning fails in the objective or in the
search (wmquant.diagnose)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .. import io as wio
from ..errors import ConfigError


def diagnose_main(argv: Sequence[str]) -> int:
    from ..diagnose.landscape import LANDSCAPE_SEEDS, encoder_fn, pusht_landscape, wall_landscape
    from ..models.checkpoint import load_world_model
    from ..planning.engine import resolve_device
    from . import flag_parser

    parser = flag_parser("wmquant diagnose", "Diagnostics of a world model: its encoder's goal-cost landscape, its open-loop error over the planning horizon, or whether its planning fails in the search or the objective.")
    parser.add_argument("what", choices=("landscape", "rollout", "objective"))
    parser.add_argument("--model", required=True, help="a shipped model name or a model directory")
    parser.add_argument("--out", type=Path, default=None, help="directory for the JSON report (and landscape.png)")
    parser.add_argument("--goals", type=int, default=None, help="number of goals or episodes (default: landscape 30 Wall, 12 PushT; rollout and objective 50)")
    parser.add_argument("--seed", type=int, default=None, help="landscape: goal seed (default 0); rollout, objective: the planning seed (default 99)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="rollout, objective: a planning config override, e.g. planner.sub_planner.num_samples=100")
    parser.add_argument("--dataset", default=None, help="rollout, objective: dataset to draw episodes from (default: the model's goal file)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(list(argv))
    if args.goals is not None and args.goals < 1:
        raise ConfigError(f"--goals must be a positive integer, got {args.goals}")
    if args.what == "landscape" and (args.overrides or args.dataset):
        raise ConfigError("--set and --dataset apply to `diagnose rollout` and `diagnose objective`, not to landscape")
    if args.what == "rollout":
        return _rollout(args)
    if args.what == "objective":
        return _objective(args)
    args.seed = 0 if args.seed is None else args.seed
    if not 0 <= args.seed < LANDSCAPE_SEEDS:
        raise ConfigError(f"--seed must be an integer in [0, {LANDSCAPE_SEEDS}) for landscape, got {args.seed}")
    model, cfg = load_world_model(args.model)
    meta = cfg.get("planning") or {}
    env = meta.get("env")
    if env not in ("wall", "pusht"):
        raise ConfigError(f"model {args.model!r} has no planning.env in its config.yaml (wall or pusht)")
    out = args.out or Path(f"landscape_{Path(args.model).name}")
    out.mkdir(parents=True, exist_ok=True)
    encode = encoder_fn(model, int(meta["img_size"]), resolve_device(args.device))
    figure = out / "landscape.png"
    if env == "wall":
        report = wall_landscape(encode, n_goals=args.goals or 30, seed=args.seed, figure=figure)
    else:
        report = pusht_landscape(encode, render_size=int(meta.get("render_size") or meta["img_size"]),
                                 n_goals=args.goals or 12, seed=args.seed, figure=figure)
    wio.write_json(out / "landscape.json", report.as_dict())
    print(report.summary())
    print(f"wrote {out / 'landscape.json'} and {figure}")
    return 0


def _session_and_episodes(args, dataset_goals: bool):
    """The planning session of the model's env (plan_<env>.yaml; `dataset_goals`: goals from
    dataset segments, with their true actions) and its evaluation episodes and env."""
    from ..configs import compose_config
    from ..models.checkpoint import read_model_config
    from ..planning.session import PlanningSession

    cfg = read_model_config(args.model)  # the env only: the session loads the model
    env_name = (cfg.get("planning") or {}).get("env")
    if env_name not in ("wall", "pusht"):
        raise ConfigError(f"model {args.model!r} has no planning.env in its config.yaml (wall or pusht)")
    overrides = [f"model_name={args.model}", f"n_evals={args.goals or 50}", f"engine.device={args.device}"]
    if dataset_goals:
        overrides.append("goal_source=dset")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.dataset:
        overrides.append(f"dataset_path={args.dataset}")
    session = PlanningSession(compose_config(f"plan_{env_name}", overrides + list(args.overrides)))
    episodes, env = session.episodes("evaluation")
    return session, episodes, env


def _rollout(args) -> int:
    """`wmquant diagnose rollout`: the open-loop error on the evaluation episodes of the plan config."""
    from ..diagnose.open_loop import open_loop_error, open_loop_table

    session, episodes, env = _session_and_episodes(args, dataset_goals=True)
    try:
        report = open_loop_error(session, episodes, env)
    finally:
        env.close()
    out = args.out or Path(f"rollout_{Path(args.model).name}")
    out.mkdir(parents=True, exist_ok=True)
    wio.write_json(out / "open_loop.json", report)
    print(open_loop_table(report))
    print(f"wrote {out / 'open_loop.json'}")
    return 0


def _objective(args) -> int:
    """`wmquant diagnose objective`: at the first MPC step, the model's CEM plan against the
    simulator's, each scored by the model's cost and by the simulator."""
    import numpy as np

    from ..diagnose.objective import search_or_objective, search_or_objective_table
    from ..envs import env_function

    session, episodes, env = _session_and_episodes(args, dataset_goals=False)
    try:
        report = search_or_objective(session, episodes, env)
    finally:
        env.close()
    groups = {}
    needs_push = env_function(episodes.env, "needs_push")
    if needs_push is not None:
        mask = np.asarray(needs_push(episodes.init_states, episodes.goal_states), bool)
        groups = {"the block must move >= 5 px": mask, "the block need not move": ~mask}
        report["needs_push"] = mask.astype(int).tolist()
    sub = session.cfg.planner.sub_planner
    report["cem"] = {"num_samples": int(sub.num_samples), "topk": int(sub.topk), "opt_steps": int(sub.opt_steps)}
    out = args.out or Path(f"objective_{Path(args.model).name}")
    out.mkdir(parents=True, exist_ok=True)
    wio.write_json(out / "objective.json", report)
    print(search_or_objective_table(report, groups))
    summary = report["summary"]
    if summary["prediction_failures"]:
        print(f"On the {summary['prediction_failures']} prediction failures (median): the model predicts the simulator's "
              f"plan to cost {summary['prediction_failures_simulator_plan_predicted_over_true_median']:.2f}x what its true "
              f"outcome costs, and its own plan {summary['prediction_failures_model_plan_true_over_predicted_median']:.2f}x "
              "less than its true outcome costs.")
    print(f"wrote {out / 'objective.json'}")
    return 0
