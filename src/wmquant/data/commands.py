"""`wmquant data`: generate a dataset in DINO-WM's on-disk layout."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError



def data_main(argv: Sequence[str]) -> int:
    from ..cli import flag_parser
    from ..envs import ENV_NAMES
    from .generate import generate_dataset

    parser = flag_parser("wmquant data", "Generate trajectories and write them in DINO-WM's on-disk layout.")
    parser.add_argument("--env", required=True, help=f"one of {', '.join(ENV_NAMES)}")
    parser.add_argument("--out", required=True, type=Path, help="output directory (must not exist)")
    parser.add_argument("--episodes", required=True, type=int, help="number of episodes")
    parser.add_argument("--seed", type=int, default=0, help="seed (generation is deterministic per seed)")
    parser.add_argument("--steps", type=int, default=None, help="env steps per episode (default: per env)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--render-size", type=int, default=None, help="PushT frame size in px (default 224)")
    parser.add_argument("--video", choices=("mp4", "pth"), default=None, help="PushT frame files: mp4 (as upstream) or pth (lossless)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(list(argv))
    for flag in ("episodes", "steps", "render_size"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise ConfigError(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
    if args.env not in ENV_NAMES:
        raise ConfigError(f"unknown env {args.env!r}; valid envs: {', '.join(ENV_NAMES)}")
    kwargs = {}
    if args.env == "pusht":
        if args.render_size is not None:
            kwargs["render_size"] = args.render_size
        if args.video is not None:
            kwargs["video"] = args.video
    elif args.render_size is not None or args.video is not None:
        raise ConfigError("--render-size and --video apply to --env pusht only (Wall frames are 65x65)")
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    start = time.perf_counter()
    stats = generate_dataset(args.env, args.out, args.episodes, args.seed, steps=args.steps, workers=workers,
                             progress=not args.quiet, **kwargs)
    seconds = time.perf_counter() - start
    print(json.dumps({"out": str(args.out), "seconds": round(seconds, 2), **stats}, indent=2, default=str))
    return 0
