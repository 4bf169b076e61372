"""Run several study specs as one queue on the GPUs of one machine, within a time budget.

Each spec keeps its own sweep dir (sweeps/<spec>), bound to the spec as `wmquant sweep` binds it, so
`wmquant report sweeps/<spec>` and a later `wmquant sweep` see the same store. What this adds for a
device call of limited time:

* a run that several specs share (same overrides, so the same run id: the FP baseline, Table 7's
  8/8/8/8 rows = Table 3's per-tensor W8A8 rows) is run once and copied into every sweep that lists it;
* the pending runs go cheapest first, so a call that ends early leaves the expensive ones (low bit
  widths: planning that fails runs all 50 MPC iterations for every episode) for the next call;
* `--seconds` bounds the whole call: no run starts in its last --min-start seconds, and runs still going
  at the end are killed: a killed run leaves no result, as in any sweep, but keeps the checkpoint
  (mpc_state.npz) of its last finished MPC iteration, which the next call continues.

Usage (device machine, after scripts/gpu/setup.sh):
  python3 scripts/gpu/study_queue.py --seconds 520 --jobs 3 --first engines_wall table3 \
      --set act_scales_dir=act_scales table7 table3 table1 table4 engines_wall
(--first takes every name up to the next option, so the specs to run come after another option.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from wmquant.study.spec import BIT_KEYS, load_spec, parse_override_strings
from wmquant.study.store import ResultStore
from wmquant.study.sweep import DEFAULT_RUNNER, LOG_FILE, visible_gpus, worker_command

OFF = 16


def cost_rank(overrides: dict) -> tuple:
    """Cheap first: the lowest bit width of a run predicts whether its planning fails (and so runs
    every episode for every MPC iteration); FP first of all."""
    if overrides.get("method") == "fp":
        return (-OFF - 1, 0)
    bits = [int(overrides.get(k, OFF)) for k in BIT_KEYS]
    return (-min(bits), -sum(bits))


def copy_run(source: Path, target: Path) -> None:
    """Copy a finished run dir into another sweep atomically (temp dir, then rename)."""
    if (target / "result.json").exists():
        return
    temp = target.parent / f".copy-{target.name}-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    shutil.copytree(source, temp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(temp, target)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+")
    parser.add_argument("--root", default="sweeps", type=Path)
    parser.add_argument("--seconds", type=float, default=520.0)
    parser.add_argument("--jobs", type=int, default=3, help="runs at a time (all on the visible GPUs)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for every run (bound to the sweep dirs, as `wmquant sweep` does)")
    parser.add_argument("--first", nargs="*", default=[], metavar="SPEC",
                        help="specs whose runs go before all others (cheapest first among them too)")
    parser.add_argument("--min-start", type=float, default=45.0,
                        help="start no run with less than this many seconds left")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.seconds

    stores: dict[str, ResultStore] = {}
    homes: dict[str, list[str]] = {}  # run id -> specs that list it, in the order given
    overrides: dict[str, dict] = {}
    for name in args.specs:
        spec = load_spec(name)
        store = ResultStore(args.root / spec.name)
        user = spec.normalise_overrides(parse_override_strings(args.overrides))
        runs = spec.expand(user)
        store.bind(spec, user, runs)
        stores[spec.name] = store
        for run in runs:
            homes.setdefault(run.run_id, []).append(spec.name)
            overrides[run.run_id] = run.overrides
            store.prepare_run(run)

    def share(run_id: str) -> bool:
        """Copy a finished run into every sweep that lists it; True if it is finished somewhere."""
        done = [s for s in homes[run_id] if (stores[s].run_dir(run_id) / "result.json").exists()]
        for s in homes[run_id]:
            if done and s not in done:
                copy_run(stores[done[0]].run_dir(run_id), stores[s].run_dir(run_id))
        return bool(done)

    def priority(run_id: str) -> tuple:
        return (not any(s in args.first for s in homes[run_id]), *cost_rank(overrides[run_id]))

    pending = sorted((r for r in homes if not share(r)), key=priority)
    print(f"{len(homes)} distinct runs in {len(args.specs)} specs, {len(pending)} to run, {args.jobs} at a time",
          flush=True)
    gpus = visible_gpus() or [""]
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    finished, failed = [], []
    slot = 0
    try:
        while pending or running:
            left = deadline - time.monotonic()
            while pending and len(running) < args.jobs and left > args.min_start:
                run_id = pending.pop(0)
                run_dir = stores[homes[run_id][0]].run_dir(run_id)
                env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpus[slot % len(gpus)]}
                slot += 1
                with open(run_dir / LOG_FILE, "ab") as log_file:
                    process = subprocess.Popen(worker_command(DEFAULT_RUNNER, run_dir), env=env, stdout=log_file,
                                               stderr=subprocess.STDOUT, start_new_session=True)
                running[run_id] = (process, time.monotonic())
            if left <= 0:
                break
            if not pending and not running:
                break
            time.sleep(1.0)
            for run_id, (process, started) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[run_id]
                seconds = time.monotonic() - started
                if process.returncode == 0 and share(run_id):
                    finished.append(run_id)
                    print(f"done   {run_id} ({seconds:.0f} s) -> {', '.join(homes[run_id])}", flush=True)
                else:
                    failed.append(run_id)
                    print(f"FAILED {run_id} (exit {process.returncode}, {seconds:.0f} s); see its {LOG_FILE}", flush=True)
            if not running and pending and deadline - time.monotonic() <= args.min_start:
                break
    finally:
        for run_id, (process, _) in running.items():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for run_id, (process, _) in running.items():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
    print(f"finished {len(finished)}, failed {len(failed)}, cut off {len(running)}, not started {len(pending)}",
          flush=True)
    for name, store in stores.items():
        print(f"  {name}: {len(store.completed())} of {len(store.planned_runs())} runs complete", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
