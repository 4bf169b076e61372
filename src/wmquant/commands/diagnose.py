"""`wmquant diagnose landscape|rollout`: a frozen encoder's goal-cost landscape, or a model's
open-loop error over the planning horizon (wmquant.diagnose)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .. import io as wio
from ..errors import ConfigError


def diagnose_main(argv: Sequence[str]) -> int:
    from ..diagnose.landscape import encoder_fn, pusht_landscape, wall_landscape
    from ..models.checkpoint import load_world_model
    from ..planning.engine import resolve_device
    from . import flag_parser

    parser = flag_parser("wmquant diagnose", "Diagnostics of a world model: its encoder's goal-cost landscape, or its open-loop error over the planning horizon.")
    parser.add_argument("what", choices=("landscape", "rollout"))
    parser.add_argument("--model", required=True, help="a shipped model name or a model directory")
    parser.add_argument("--out", type=Path, default=None, help="directory for the JSON report (and landscape.png)")
    parser.add_argument("--goals", type=int, default=None, help="number of goals or episodes (default: landscape 30 Wall, 12 PushT; rollout 50)")
    parser.add_argument("--seed", type=int, default=None, help="landscape: goal seed (default 0); rollout: the planning seed (default 99)")
    parser.add_argument("--dataset", default=None, help="rollout: dataset to draw episodes from (default: the model's goal file)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(list(argv))
    if args.goals is not None and args.goals < 1:
        raise ConfigError(f"--goals must be a positive integer, got {args.goals}")
    if args.what == "rollout":
        return _rollout(args)
    args.seed = 0 if args.seed is None else args.seed
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


def _rollout(args) -> int:
    """`wmquant diagnose rollout`: the open-loop error on the evaluation episodes of the plan config."""
    from ..configs import compose_config
    from ..models.checkpoint import read_model_config
    from ..planning.session import PlanningSession
    from ..diagnose.open_loop import open_loop_error, open_loop_table

    cfg = read_model_config(args.model)  # the env only: the session loads the model
    env_name = (cfg.get("planning") or {}).get("env")
    if env_name not in ("wall", "pusht"):
        raise ConfigError(f"model {args.model!r} has no planning.env in its config.yaml (wall or pusht)")
    overrides = [f"model_name={args.model}", f"n_evals={args.goals or 50}", f"engine.device={args.device}", "goal_source=dset"]
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.dataset:
        overrides.append(f"dataset_path={args.dataset}")
    session = PlanningSession(compose_config(f"plan_{env_name}", overrides))
    episodes, env = session.episodes("evaluation")
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
