"""`wmquant data`: generate a dataset in DINO-WM's on-disk layout."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError
from . import flag_parser


def data_main(argv: Sequence[str]) -> int:
    from ..data.generate import generate_dataset
    from ..envs import ENV_NAMES

    parser = flag_parser("wmquant data", "Generate trajectories and write them in DINO-WM's on-disk layout.")
    parser.add_argument("--env", required=True, help=f"one of {', '.join(ENV_NAMES)}")
    parser.add_argument("--out", required=True, type=Path, help="output directory (must not exist), or with --goals-from the goal file to write")
    parser.add_argument("--episodes", type=int, default=None, help="number of episodes (required unless --goals-from)")
    parser.add_argument("--goals-from", type=Path, default=None,
                        help="instead of generating: write a goal file (states and actions, no frames) from this dataset's val split and part of its train split")
    parser.add_argument("--train-episodes", type=int, default=200, help="with --goals-from: train episodes kept for calibration goals (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed (generation is deterministic per seed)")
    parser.add_argument("--steps", type=int, default=None, help="env steps per episode (default: per env)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--render-size", type=int, default=None, help="PushT frame size in px (default 224)")
    parser.add_argument("--video", choices=("mp4", "pth"), default=None, help="PushT frame files: mp4 (as upstream) or pth (lossless)")
    parser.add_argument("--policy", default=None, help="PushT policy: expert (default; demonstration-like, as pusht_noise) or pusher (roams the arena)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the statistics as JSON instead of a summary")
    args = parser.parse_args(list(argv))
    if args.env not in ENV_NAMES:
        raise ConfigError(f"unknown env {args.env!r}; valid envs: {', '.join(ENV_NAMES)}")
    if args.goals_from is not None:
        return _write_goals(args)
    if args.episodes is None:
        raise ConfigError("--episodes is required (the number of episodes to generate)")
    for flag in ("episodes", "steps", "render_size"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise ConfigError(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
    kwargs = {}
    if args.env == "pusht":
        if args.render_size is not None:
            kwargs["render_size"] = args.render_size
        if args.video is not None:
            kwargs["video"] = args.video
        if args.policy is not None:
            from ..data.pusht_policies import POLICIES

            if args.policy not in POLICIES:
                raise ConfigError(f"unknown --policy {args.policy!r}; valid policies: {', '.join(POLICIES)}")
            kwargs["policy"] = args.policy
    elif args.render_size is not None or args.video is not None or args.policy is not None:
        raise ConfigError("--render-size, --video and --policy apply to --env pusht only")
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    start = time.perf_counter()
    stats = generate_dataset(args.env, args.out, args.episodes, args.seed, steps=args.steps, workers=workers,
                             progress=not args.quiet, **kwargs)
    seconds = time.perf_counter() - start
    if args.json:
        print(json.dumps({"out": str(args.out), "seconds": round(seconds, 2), **stats}, indent=2, default=str))
    else:
        print(summary(args.env, args.out, stats, seconds))
    return 0


def _write_goals(args) -> int:
    from ..data.goals import goal_file_from_dataset

    if args.train_episodes < 1:
        raise ConfigError(f"--train-episodes must be a positive integer, got {args.train_episodes}")
    if args.out.suffix != ".safetensors":
        raise ConfigError(f"--out {args.out} must name a .safetensors goal file")
    path = goal_file_from_dataset(args.goals_from, args.env, args.out, train_episodes=args.train_episodes)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def summary(env: str, out: Path, stats: dict, seconds: float) -> str:
    """A few lines a person reads after `wmquant data`: what was written, and for PushT how the data
    compare with the official statistics and what goals they make."""
    lines = [f"wrote {out}: {stats.get('episodes')} {env} episodes in {seconds:.0f} s"
             + (f" ({stats['train_episodes']} train, {stats['val_episodes']} val)" if "train_episodes" in stats else "")]
    if env == "wall":
        lines.append(f"distinct wall/door layouts: {stats.get('distinct_layouts')}; {100 * stats.get('door_crossing_fraction', 0):.0f}% of episodes "
                     f"cross the door; {100 * stats.get('collision_step_fraction', 0):.0f}% of steps hit a wall")
        return "\n".join(lines)
    length = stats.get("episode_length") or {}
    lines.append(f"policy {stats.get('policy')}; {stats.get('render_size')} px {stats.get('video')} frames; episodes of "
                 f"{length.get('min')}-{length.get('max')} frames (mean {length.get('mean', 0):.0f}); "
                 f"{100 * stats.get('reached_goal_fraction', 0):.1f}% reached the goal pose")
    comparison = stats.get("official_comparison")
    if comparison:
        from ..data.pusht_stats import DimensionCheck, statistics_table

        checks = [DimensionCheck.from_dict(entry) for entry in comparison]
        passed = sum(c.ok for c in checks)
        lines += ["", f"Against the official pusht_noise statistics (spec 2.10): {passed} of {len(checks)} dimensions within "
                  "bounds (mean within 0.25 official std, std within 15 %):", statistics_table(checks)]
    if stats.get("val_segments"):
        from ..data.pusht_stats import segment_table

        lines += ["", "Goal segments of the validation split:", segment_table(stats["val_segments"])]
    lines += ["", "(--json prints every statistic)"]
    return "\n".join(lines)
