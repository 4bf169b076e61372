"""Wall env speed and Wall dataset generation time.

    python benchmarks/env_speed.py                       # 50 envs x 250 steps, 2000-episode dataset
    python benchmarks/env_speed.py --skip-generation     # env speed only

Env steps/s count one env advancing one step with its frame rendered (65 x 65 RGB). Three ways:
`rollout` (WallBatchEnv.rollout, all frames returned), `step loop` (reset_to + one `step` call per
time step for all envs, as an MPC loop does) and `single env` (gymnasium WallEnv.step). Prints one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from wmquant.data.generate import generate_dataset
from wmquant.envs.wall import WallBatchEnv, WallEnv


def best_seconds(function, repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        timings.append(time.perf_counter() - started)
    return min(timings)


def env_speed(num_envs: int, steps: int, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    env = WallBatchEnv(num_envs)
    inits, _ = env.sample_random_init_goal_states(list(range(num_envs)))
    actions = rng.normal(0.0, 1.0, (num_envs, steps, 2))

    def step_loop():
        env.reset_to(inits)
        for t in range(steps):
            env.step(actions[:, t])

    single = WallEnv()
    single_steps = min(steps * 4, 2000)

    def single_loop():
        single.reset(seed=0)
        for t in range(single_steps):
            single.step(actions[t % num_envs, t % steps])

    transitions = num_envs * steps
    return {
        "rollout_env_steps_per_s": transitions / best_seconds(lambda: env.rollout(inits, actions), repeats),
        "step_loop_env_steps_per_s": transitions / best_seconds(step_loop, repeats),
        "single_env_steps_per_s": single_steps / best_seconds(single_loop, repeats),
    }


def generation_time(episodes: int, steps: int, workers: int | None, scratch: Path) -> dict[str, float]:
    out = scratch / "wall_dataset"
    started = time.perf_counter()
    stats = generate_dataset("wall", out, episodes, seed=0, steps=steps, workers=workers, progress=True)
    seconds = time.perf_counter() - started
    size = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    shutil.rmtree(out)
    return {
        "generation_seconds": seconds,
        "episodes": episodes,
        "steps_per_episode": steps,
        "dataset_bytes": size,
        "door_crossing_fraction": stats["door_crossing_fraction"],
        "collision_step_fraction": stats["collision_step_fraction"],
        "action_std": stats["action_std"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, default=50, help="batched envs (default 50)")
    parser.add_argument("--steps", type=int, default=250, help="steps per env (default 250)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is kept")
    parser.add_argument("--episodes", type=int, default=2000, help="episodes to generate (default 2000)")
    parser.add_argument("--gen-steps", type=int, default=50, help="steps per generated episode (default 50)")
    parser.add_argument("--workers", type=int, default=None, help="generation workers (default: all cores)")
    parser.add_argument("--scratch", type=Path, default=None, help="where to write the dataset (default: a temp dir)")
    parser.add_argument("--skip-generation", action="store_true")
    args = parser.parse_args()

    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "envs": args.envs,
        "steps": args.steps,
        **env_speed(args.envs, args.steps, args.repeats),
    }
    if not args.skip_generation:
        scratch = Path(tempfile.mkdtemp(dir=args.scratch))
        try:
            result.update(generation_time(args.episodes, args.gen_steps, args.workers, scratch))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
