"""PushT speed: single-core env steps per second (with rendering), dataset generation time, and the
fraction of generated transitions that move the block.

    python benchmarks/pusht_speed.py                       # everything, defaults below
    python benchmarks/pusht_speed.py --gen-episodes 200 --extrapolate-to 2000

Generation of `--gen-episodes` episodes runs in a fresh temporary directory with all cores
(`--workers`); when that is fewer than `--extrapolate-to` episodes the time for the larger count is
extrapolated linearly (episodes are independent) and marked as such. Prints one JSON object per
measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def env_steps_per_second(render_size: int, steps: int) -> dict:
    """Steps of one env in this process, random pushing-scale actions, rendering every frame."""
    from wmquant.envs import make

    env = make("pusht", render_size=render_size)
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    actions = rng.normal(0.0, 0.2, (steps, 2))  # the dataset's action std in env units
    for action in actions[:20]:  # warm-up
        env.step(action)
    started = time.perf_counter()
    for action in actions:
        env.step(action)
    seconds = time.perf_counter() - started
    return {"measure": "env_steps_per_second", "render_size": render_size, "steps": steps, "seconds": seconds, "steps_per_second": steps / seconds}


def generation(episodes: int, steps: int | None, workers: int, render_size: int, extrapolate_to: int) -> dict:
    from wmquant.data.pusht import DEFAULT_STEPS, generate_pusht_dataset

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        stats = generate_pusht_dataset(Path(tmp) / "pusht", episodes, seed=0, steps=steps, workers=workers, progress=True, render_size=render_size)
        seconds = time.perf_counter() - started
        size_bytes = sum(f.stat().st_size for f in (Path(tmp) / "pusht").rglob("*") if f.is_file())
    result = {
        "measure": "generation",
        "episodes": episodes,
        "steps": steps or DEFAULT_STEPS,
        "workers": workers,
        "render_size": render_size,
        "seconds": seconds,
        "dataset_megabytes": size_bytes / 2**20,
        "block_moving_fraction": stats["block_moving_fraction"],
        "action_std_px": stats["action_std_px"],
    }
    if extrapolate_to > episodes:
        result[f"extrapolated_seconds_for_{extrapolate_to}"] = seconds * extrapolate_to / episodes
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env-steps", type=int, default=1000, help="steps per env-speed measurement")
    parser.add_argument("--render-sizes", type=int, nargs="+", default=[96, 224])
    parser.add_argument("--gen-episodes", type=int, default=2000)
    parser.add_argument("--gen-steps", type=int, default=None, help="frames per episode (default: the generator's)")
    parser.add_argument("--gen-render-size", type=int, default=224)
    parser.add_argument("--extrapolate-to", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-env", action="store_true")
    parser.add_argument("--skip-generation", action="store_true")
    args = parser.parse_args()

    print(json.dumps({"cpu_count": os.cpu_count()}))
    if not args.skip_env:
        for size in args.render_sizes:
            print(json.dumps(env_steps_per_second(size, args.env_steps)), flush=True)
    if not args.skip_generation:
        print(json.dumps(generation(args.gen_episodes, args.gen_steps, args.workers, args.gen_render_size, args.extrapolate_to)), flush=True)


if __name__ == "__main__":
    main()
