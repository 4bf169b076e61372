"""On the device machine: does the fused fake-quant kernel change any study result, and what does it save?

1. Re-runs finished study runs (their run.json, from carry_sweeps/, which also holds their results,
   computed earlier with the eager path) with the fused kernels, and compares every per-episode,
   per-iteration number of the new result with the stored one: they must be equal.
2. Times the same planning with the fused kernels off (WMQUANT_FUSED_FAKE_QUANT=0) and on, for
   configurations whose every episode plans at every iteration (skip_succeeded=false, the cost of a
   failing low-bit run): the median seconds per MPC iteration after the first (progress.json), and
   checks that both give equal results.

Usage: python3 scripts/gpu/fused_check.py --out $OUT/fused_check.json [--iterations 3] SPEC/RUN_ID ...
(timing runs: --timed SPEC/RUN_ID ...). Exit status 1 if any result differs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from wmquant.io import write_json
from wmquant.quant.fused_fake_quant import ENV_SWITCH
from wmquant.study.sweep import DEFAULT_RUNNER, worker_command

COMPARED = ("success_by_iter", "latent_mse_by_iter", "planning_loss_by_iter", "first_success_iter", "episodes")


def run_once(source: Path, work: Path, extra: dict, fused: bool) -> tuple[dict, float]:
    """Run the run of `source`/run.json (plus `extra` overrides) in a fresh dir; (result, seconds)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    spec = json.loads((source / "run.json").read_text())
    spec["overrides"].update(extra)
    (work / "run.json").write_text(json.dumps(spec))
    env = {**os.environ, ENV_SWITCH: "1" if fused else "0"}
    start = time.perf_counter()
    with open(work / "log.txt", "wb") as log:
        code = subprocess.call(worker_command(DEFAULT_RUNNER, work), env=env, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{work}: exit {code}; see {work / 'log.txt'}")
    return json.loads((work / "result.json").read_text()), seconds


def run_source(store: Path, name: str) -> Path:
    """store/SPEC/runs/RUN_ID for a "SPEC/RUN_ID" argument; exits with a one-line error if absent."""
    spec, _, run_id = name.partition("/")
    source = store / spec / "runs" / run_id
    if not run_id or not (source / "run.json").is_file():
        print(f"error: no run {name!r} under {store} (expected SPEC/RUN_ID with {store}/SPEC/runs/RUN_ID/run.json)",
              file=sys.stderr)
        raise SystemExit(2)
    return source


def differences(a: dict, b: dict) -> list[str]:
    return [key for key in COMPARED if a.get(key) != b.get(key)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("replays", nargs="*", help="SPEC/RUN_ID of finished runs under --store, re-run with fused kernels")
    parser.add_argument("--timed", nargs="*", default=[], help="SPEC/RUN_ID to time with fused kernels off and on")
    parser.add_argument("--iterations", type=int, default=3, help="MPC iterations of each timed run")
    parser.add_argument("--store", type=Path, default=Path("carry_sweeps"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/fused_check"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    report: dict = {"replays": [], "timed": []}
    failed = False

    def save() -> None:
        write_json(args.out, report)

    for name in args.replays:
        source = run_source(args.store, name)
        stored = json.loads((source / "result.json").read_text())
        result, seconds = run_once(source, args.work / name.replace("/", "_"), {}, fused=True)
        diff = differences(stored, result)
        failed |= bool(diff)
        report["replays"].append({"run": name, "stored_success": stored["final_success_rate"],
                                  "fused_success": result["final_success_rate"], "differs_in": diff,
                                  "stored_seconds": stored["wall_seconds"], "fused_seconds": round(seconds, 1),
                                  "kernels": result.get("fake_quant_kernels")})
        print(json.dumps(report["replays"][-1]), flush=True)
        save()
    for name in args.timed:
        source = run_source(args.store, name)
        extra = {"planner.max_iter": args.iterations, "planner.skip_succeeded": False}
        row = {"run": name, "iterations": args.iterations}
        results = {}
        for fused in (False, True):
            label = "fused" if fused else "eager"
            work = args.work / f"timed_{label}"
            results[label], seconds = run_once(source, work, extra, fused)
            per_iteration = json.loads((work / "progress.json").read_text())["iteration_seconds"][1:]
            row[f"{label}_seconds"] = round(seconds, 1)
            row[f"{label}_seconds_per_iteration"] = round(statistics.median(per_iteration), 3)
        row["differs_in"] = differences(results["eager"], results["fused"])
        failed |= bool(row["differs_in"])
        report["timed"].append(row)
        print(json.dumps(row), flush=True)
        save()
    report["all_equal"] = not failed
    save()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
