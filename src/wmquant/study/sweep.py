"""Run every configuration of a study spec into one results store, resumably.

`run_sweep` expands the spec, binds the sweep directory to it (sweep.json), skips every run whose
result.json is already complete, and hands the rest to a launcher:

  serial          one run after another in this process;
  local_gpus      one worker process per visible GPU (CUDA_VISIBLE_DEVICES pinned per job), or a
                  single CPU worker when there is no GPU;
  submitit_local  submitit's local executor (one process per job);
  submitit_slurm  a Slurm job array through submitit.

The two submitit launchers take the keys of Hydra's submitit launcher plugin
(`hydra/launcher=submitit_slurm`, `hydra.launcher.partition=...`, `gpus_per_node`, `timeout_min`,
`cpus_per_task`, `mem_gb`, ...), with the plugin's defaults, read from the plugin's own config
classes. The plugin itself only launches jobs of a Hydra application (it re-composes the job's
config through Hydra's config loader), so wmquant drives submitit the way the plugin does rather
than through the plugin's `launch`.

Each job calls `execute_run(runner, run_dir)`: the runner (a "module:function" or
"path/to/file.py:function" string, so that it pickles for any executor) gets the overrides in
run_dir/run.json and writes run_dir/result.json atomically. Whichever launcher ran it, the result
lands in the same store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..errors import StudyError, WmquantError
from ..io import write_json
from .spec import load_spec, parse_override_strings, short_hash
from .store import ERROR_FILE, RESULT_FILE, RUN_FILE, TEMP_PREFIX, ResultStore, read_result

log = logging.getLogger("wmquant.study")

DEFAULT_RUNNER = "wmquant.study.runner:run_one"
LAUNCHERS = ("serial", "local_gpus", "submitit_local", "submitit_slurm")
LOCAL_GPUS_OPTIONS = ("gpus", "jobs_per_gpu", "timeout_min")
LOG_FILE = "log.txt"


@dataclass
class SweepSummary:
    """What one `run_sweep` call did."""

    sweep_dir: Path
    spec: str
    launcher: str
    planned: list[str]                                    # run ids of this sweep (after select)
    skipped: list[str] = field(default_factory=list)      # complete before this call
    succeeded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # run id -> one-line reason
    on_finish: Callable[[Path, str | None], None] | None = None  # (run dir, failure or None) after each run

    def record(self, run_dir: Path, failure: str | None = None) -> None:
        """A run ended: succeeded, or failed for `failure` (one line)."""
        if failure is None:
            self.succeeded.append(run_dir.name)
        else:
            self.failed[run_dir.name] = failure
            log.warning("run %s failed: %s", run_dir.name, failure)
        if self.on_finish is not None:
            self.on_finish(run_dir, failure)

    @property
    def complete(self) -> bool:
        return not self.failed and len(self.skipped) + len(self.succeeded) == len(self.planned)

    def __str__(self) -> str:
        text = (f"sweep {self.spec} in {self.sweep_dir}: {len(self.planned)} runs, {len(self.skipped)} already "
                f"complete, {len(self.succeeded)} ran, {len(self.failed)} failed")
        return text + "".join(f"\n  failed {run_id}: {reason}" for run_id, reason in self.failed.items())


# ---------------------------------------------------------------------------------------------
# The job: one run, in whatever process the launcher chose

def resolve_runner(runner: str) -> Callable[[dict, Path], Any]:
    """Import "package.module:function" or "path/to/file.py:function"."""
    target, sep, attribute = runner.rpartition(":")
    if not sep or not target or not attribute:
        raise StudyError(f"runner {runner!r} must look like 'package.module:function' or 'file.py:function'")
    try:
        if target.endswith(".py"):
            path = Path(target).resolve()
            name = "wmquant_runner_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
            module = sys.modules.get(name)
            if module is None:
                spec = importlib.util.spec_from_file_location(name, path)
                if spec is None or spec.loader is None or not path.is_file():
                    raise ImportError(f"no such file {path}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ImportError as exc:
        raise StudyError(f"cannot import runner {runner!r}: {exc}") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise StudyError(f"runner {runner!r}: {target} has no function {attribute!r}")
    return function


def runner_reference(runner: str | Callable) -> str:
    """The "module:function" / "/abs/file.py:function" text that every launcher can hand on.

    A module-level function is accepted too and turned into such a reference; relative file
    paths become absolute, because jobs may start in another directory.
    """
    if callable(runner):
        name = getattr(runner, "__qualname__", "")
        module = sys.modules.get(getattr(runner, "__module__", ""))
        if not name.isidentifier() or module is None:
            raise StudyError(f"runner {runner!r} must be a module-level function (jobs import it by name)")
        if "." in module.__name__:  # a module of a package: importable by name wherever wmquant is
            return f"{module.__name__}:{name}"
        # A script or a test module is importable only from its own directory: refer to its file.
        source = inspect.getsourcefile(runner)
        if source is None:
            raise StudyError(f"runner {runner!r} has no source file to import it from")
        return f"{Path(source).resolve()}:{name}"
    target, _, attribute = str(runner).rpartition(":")
    return f"{Path(target).resolve()}:{attribute}" if target.endswith(".py") else str(runner)


def execute_run(runner: str, run_dir: str | os.PathLike) -> dict:
    """Run one planning run: the job every launcher executes.

    Reads run_dir/run.json, calls the runner with its overrides, and checks that
    run_dir/result.json is complete and valid (a runner that only returns its result gets it
    written atomically here). A failure is recorded in run_dir/error.json and re-raised.
    Returns {"run_id", "status": "done", "seconds"}.
    """
    run_dir = Path(run_dir)
    store = ResultStore(run_dir.parent.parent)
    run_id = run_dir.name
    started = time.time()
    try:
        record = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
        for leftover in run_dir.glob(f"{TEMP_PREFIX}*"):  # a killed attempt's half-written files
            leftover.unlink(missing_ok=True)
        returned = resolve_runner(runner)(dict(record["overrides"]), run_dir)
        result_path = run_dir / RESULT_FILE
        if not result_path.exists():
            if not isinstance(returned, Mapping):
                raise StudyError(f"runner {runner} neither wrote {result_path} nor returned a result")
            write_json(result_path, dict(returned))
        _, problem = read_result(result_path)
        if problem:
            raise StudyError(f"runner {runner} wrote an invalid {result_path}: {problem}")
        store.clear_failure(run_id)
        return {"run_id": run_id, "status": "done", "seconds": time.time() - started}
    except BaseException as exc:
        message = exc.one_line() if isinstance(exc, WmquantError) else f"{type(exc).__name__}: {exc}"
        store.record_failure(run_id, " ".join(message.split()), traceback.format_exc())
        raise


def _failure_message(run_dir: Path, fallback: str) -> str:
    try:
        return json.loads((run_dir / ERROR_FILE).read_text(encoding="utf-8"))["message"]
    except (OSError, ValueError, KeyError, TypeError):
        return " ".join(fallback.split())[:500]


# ---------------------------------------------------------------------------------------------
# Launchers: each takes the run dirs to run and fills summary.succeeded / summary.failed

def _launch_serial(runner: str, run_dirs: Sequence[Path], options: Mapping[str, Any], summary: SweepSummary) -> None:
    for index, run_dir in enumerate(run_dirs, 1):
        log.info("[%d/%d] %s", index, len(run_dirs), run_dir.name)
        try:
            execute_run(runner, run_dir)
        except Exception as exc:  # one failed run must not stop the sweep
            summary.record(run_dir, _failure_message(run_dir, str(exc)))
        else:
            summary.record(run_dir)


def visible_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES if set, else every CUDA device."""
    declared = os.environ.get("CUDA_VISIBLE_DEVICES")
    if declared is not None:
        return [g.strip() for g in declared.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no torch or no driver: no GPU
        return []


def _local_gpu_slots(options: Mapping[str, Any]) -> list[str]:
    """One entry per worker: the CUDA_VISIBLE_DEVICES value it runs its jobs with."""
    unknown = sorted(set(options) - set(LOCAL_GPUS_OPTIONS))
    if unknown:
        raise StudyError(f"unknown local_gpus option {unknown[0]!r}; valid: {', '.join(LOCAL_GPUS_OPTIONS)}")
    gpus = options.get("gpus")
    if gpus is None:
        gpus = visible_gpus()
    elif isinstance(gpus, (str, int)):
        gpus = [g.strip() for g in str(gpus).split(",") if g.strip()]
    else:
        gpus = [str(g) for g in gpus]
    per_gpu = options.get("jobs_per_gpu", 1)
    if not isinstance(per_gpu, int) or isinstance(per_gpu, bool) or per_gpu < 1:
        raise StudyError(f"local_gpus jobs_per_gpu must be a positive integer, got {per_gpu!r}")
    # No GPU: one CPU worker, with CUDA hidden so that a stray .cuda() fails loudly.
    return [g for g in gpus for _ in range(per_gpu)] if gpus else [""]


def worker_command(runner: str, run_dir: Path) -> list[str]:
    """The command line of a job that runs one run in a fresh Python process."""
    return [sys.executable, "-m", "wmquant.study.sweep", "--run-dir", str(run_dir), "--runner", runner]


def _run_in_subprocess(runner: str, run_dir: Path, device: str, timeout_s: float | None,
                       register: Callable[[subprocess.Popen | None], None]) -> int | None:
    """Run one job in a fresh Python process pinned to `device`; its output goes to run_dir/log.txt.
    Returns the exit code, or None when it ran past `timeout_s` and was killed."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": device}
    command = worker_command(runner, run_dir)
    with open(run_dir / LOG_FILE, "ab") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # its own process group, killed as one
        register(process)
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return None
        finally:
            register(None)


def _launch_local_gpus(runner: str, run_dirs: Sequence[Path], options: Mapping[str, Any],
                       summary: SweepSummary) -> None:
    slots = _local_gpu_slots(options)
    timeout_min = options.get("timeout_min")
    timeout_s = None if timeout_min is None else float(timeout_min) * 60.0
    pending: "queue.Queue[Path]" = queue.Queue()
    for run_dir in run_dirs:
        pending.put(run_dir)
    lock = threading.Lock()
    stop = threading.Event()
    running: dict[int, subprocess.Popen] = {}
    log.info("local_gpus: %d worker(s) on CUDA_VISIBLE_DEVICES %s", len(slots), ", ".join(repr(s) for s in slots))

    def worker(slot: int, device: str) -> None:
        def register(process: subprocess.Popen | None) -> None:
            with lock:
                if process is None:
                    running.pop(slot, None)
                else:
                    running[slot] = process

        while not stop.is_set():
            try:
                run_dir = pending.get_nowait()
            except queue.Empty:
                return
            try:
                code = _run_in_subprocess(runner, run_dir, device, timeout_s, register)
                reason = (None if code == 0 else f"timed out after {timeout_min} min" if code is None
                          else _failure_message(run_dir, f"worker exited with code {code}; see {run_dir / LOG_FILE}"))
            except OSError as exc:  # could not even start the process
                reason = f"could not start a worker process: {exc}"
            with lock:
                summary.record(run_dir, reason)

    threads = [threading.Thread(target=worker, args=(i, device), daemon=True) for i, device in enumerate(slots)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.5)
    finally:  # interrupted: start nothing new and take the running jobs down with us
        stop.set()
        with lock:
            for process in running.values():
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)


def submitit_queue_defaults(cluster: str) -> dict[str, Any]:
    """The hydra-submitit-launcher plugin's keys and defaults for "local" or "slurm"."""
    from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf

    conf = {"local": LocalQueueConf, "slurm": SlurmQueueConf}[cluster]
    defaults = {}
    for f in dataclasses.fields(conf):
        if f.name.startswith("_"):
            continue
        defaults[f.name] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return defaults


def submitit_parameters(cluster: str, options: Mapping[str, Any], sweep_dir: Path,
                        job_name: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(folder, constructor kwargs, update_parameters kwargs) for a submitit executor, mapped from
    the plugin's keys exactly as the plugin maps them: keys shared by every cluster (timeout_min,
    gpus_per_node, cpus_per_task, mem_gb, ...) pass as they are, the others get the cluster prefix
    (partition -> slurm_partition), max_num_timeout goes to the constructor."""
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    defaults = submitit_queue_defaults(cluster)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise StudyError(f"unknown hydra.launcher option {unknown[0]!r} for submitit_{cluster}; "
                         f"valid: {', '.join(sorted(defaults))}")
    params = {**defaults, **options}
    folder = str(params.pop("submitit_folder")).replace("${hydra.sweep.dir}", str(sweep_dir))
    if "${" in str(params["name"]):
        params["name"] = job_name
    init = {f"{cluster}_max_num_timeout": params.pop("max_num_timeout")} if "max_num_timeout" in params else {}
    base_keys = {f.name for f in dataclasses.fields(BaseQueueConf)}
    return folder, init, {k if k in base_keys else f"{cluster}_{k}": v for k, v in params.items()}


def make_submitit_executor(cluster: str, options: Mapping[str, Any], sweep_dir: Path, job_name: str):
    """A submitit executor for "local" or "slurm", configured by `submitit_parameters`."""
    import submitit

    folder, init, parameters = submitit_parameters(cluster, options, sweep_dir, job_name)
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster, **init)
    except RuntimeError as exc:  # e.g. no srun: not on a Slurm cluster
        raise StudyError(f"cannot use submitit_{cluster} here: {exc}") from None
    executor.update_parameters(**parameters)
    return executor


def _launch_submitit(cluster: str, runner: str, run_dirs: Sequence[Path], options: Mapping[str, Any],
                     summary: SweepSummary) -> None:
    executor = make_submitit_executor(cluster, options, summary.sweep_dir, f"wmquant-{summary.spec}")
    jobs = executor.map_array(execute_run, [runner] * len(run_dirs), [str(d) for d in run_dirs])
    log.info("submitit_%s: submitted %d job(s): %s", cluster, len(jobs), ", ".join(j.job_id for j in jobs))
    for run_dir, job in zip(run_dirs, jobs):
        try:
            job.result()
        except Exception as exc:
            summary.record(run_dir, _failure_message(run_dir, f"job {job.job_id}: {exc}"))
        else:
            summary.record(run_dir)


def _check_launcher_options(launcher: str, options: Mapping[str, Any], sweep_dir: Path) -> None:
    """Refuse unknown launcher options before anything is written."""
    if launcher == "serial" and options:
        raise StudyError(f"the serial launcher takes no options, got {sorted(options)}")
    if launcher == "local_gpus":
        _local_gpu_slots(options)
    if launcher.startswith("submitit_"):
        submitit_parameters(launcher.removeprefix("submitit_"), options, sweep_dir, "check")


def _launch(launcher: str, runner: str, run_dirs: Sequence[Path], options: Mapping[str, Any],
            summary: SweepSummary) -> None:
    if launcher == "serial":
        _launch_serial(runner, run_dirs, options, summary)
    elif launcher == "local_gpus":
        _launch_local_gpus(runner, run_dirs, options, summary)
    else:
        _launch_submitit(launcher.removeprefix("submitit_"), runner, run_dirs, options, summary)


# ---------------------------------------------------------------------------------------------

def run_sweep(spec_name_or_path: str | os.PathLike, sweep_dir: str | os.PathLike,
              overrides: Mapping[str, Any] | None = None, runner: str | Callable = DEFAULT_RUNNER,
              launcher: str = "serial", launcher_options: Mapping[str, Any] | None = None,
              select: Mapping[str, Any] | None = None, progress: bool = False) -> SweepSummary:
    """Run every run of the spec that `sweep_dir` does not hold complete yet.

    overrides: applied to every run (e.g. {"n_evals": 10, "planner.max_iter": 5}); the sweep dir
      remembers them, and resuming needs the same ones.
    select: run only the matching runs now ({"method": ["rtn", "omse"]}); the FP baseline always.
    launcher / launcher_options: see the module doc.
    progress: a bar over the runs with an ETA, and one line per finished run on stderr.
    Raises StudyError before anything runs for a bad spec, override, launcher or runner, or a
    sweep dir that belongs to another spec. Failed runs do not raise: see summary.failed.
    """
    if launcher not in LAUNCHERS:
        raise StudyError(f"unknown launcher {launcher!r}; valid: {', '.join(LAUNCHERS)}")
    spec = load_spec(spec_name_or_path)
    user = spec.normalise_overrides(overrides)
    runs = spec.expand(user, select=select)
    runner = runner_reference(runner)
    resolve_runner(runner)  # fail now, not in every job
    options = dict(launcher_options or {})
    _check_launcher_options(launcher, options, Path(sweep_dir))
    store = ResultStore(sweep_dir)
    store.bind(spec, user, spec.expand(user))
    done = store.completed()
    summary = SweepSummary(sweep_dir=store.root, spec=spec.name, launcher=launcher,
                           planned=[r.run_id for r in runs], skipped=[r.run_id for r in runs if r.run_id in done])
    todo = [store.prepare_run(r) for r in runs if r.run_id not in done]
    log.info("sweep %s: %d runs, %d complete, %d to run (%s)", spec.name, len(runs), len(summary.skipped),
             len(todo), launcher)
    if todo:
        bar = _progress_bar(summary, len(todo)) if progress else None
        try:
            _launch(launcher, runner, todo, options, summary)
        finally:
            if bar is not None:
                bar.close()
    return summary


def _progress_bar(summary: SweepSummary, count: int):
    """A tqdm bar over the runs to do (stderr), and `summary.on_finish` writing one line per run:
    its id, final success and planning time, or why it failed."""
    import sys

    from tqdm.auto import tqdm

    bar = tqdm(total=count, desc=f"sweep {summary.spec}", unit="run", file=sys.stderr, dynamic_ncols=True)
    if summary.skipped:
        bar.write(f"sweep {summary.spec}: {len(summary.skipped)} of {len(summary.planned)} runs already complete", file=sys.stderr)

    def finished(run_dir: Path, failure: str | None) -> None:
        if failure is None:
            result, problem = read_result(run_dir / RESULT_FILE)
            if result is None:
                text = f"no readable result ({problem})"
            else:
                rates = result["success_rate_by_iter"]
                seconds = result.get("wall_seconds")
                text = (f"success {rates[-1] if rates else 0.0:.2f} after {len(rates)} MPC iterations"
                        + (f", {seconds:.0f} s" if isinstance(seconds, (int, float)) else ""))
        else:
            text = f"failed: {failure}"
        bar.write(f"{run_dir.name}: {text}", file=sys.stderr)
        bar.update()

    summary.on_finish = finished
    return bar


@dataclass
class SweepArgs:
    """`wmquant sweep` arguments split into what run_sweep takes."""

    study: str
    sweep_dir: Path
    overrides: dict[str, Any]
    launcher: str = "serial"
    launcher_options: dict[str, Any] = field(default_factory=dict)
    select: dict[str, Any] = field(default_factory=dict)
    runner: str = DEFAULT_RUNNER


HYDRA_LAUNCHER_NAMES = {"basic": "serial", **{name: name for name in LAUNCHERS}}


def parse_sweep_args(items: Sequence[str], default_root: str | os.PathLike = "sweeps") -> SweepArgs:
    """Split Hydra-style arguments of `wmquant sweep`.

    study=NAME|FILE (required); hydra/launcher=serial|basic|local_gpus|submitit_local|submitit_slurm;
    hydra.launcher.KEY=VALUE (launcher options); hydra.sweep.dir=DIR or sweep_dir=DIR (default:
    DEFAULT_ROOT/<study>, plus a hash of the overrides when there are any, so the same command
    resumes the same sweep); select.KEY=V1,V2 (run a subset); runner=module:function; every other
    key=value is an override applied to every run.
    """
    parsed = parse_override_strings(items)
    study = parsed.pop("study", None)
    if not study:
        raise StudyError("wmquant sweep needs study=NAME (e.g. study=table1) or study=path/to/spec.yaml")
    launcher_name = str(parsed.pop("hydra/launcher", "serial"))
    if launcher_name not in HYDRA_LAUNCHER_NAMES:
        raise StudyError(f"unknown hydra/launcher {launcher_name!r}; valid: {', '.join(HYDRA_LAUNCHER_NAMES)}")
    launcher_options = {k.removeprefix("hydra.launcher."): parsed.pop(k) for k in list(parsed)
                        if k.startswith("hydra.launcher.")}
    select = {}
    for key in [k for k in parsed if k.startswith("select.")]:
        value = parsed.pop(key)
        select[key.removeprefix("select.")] = value.split(",") if isinstance(value, str) else value
    sweep_dir = parsed.pop("hydra.sweep.dir", None) or parsed.pop("sweep_dir", None)
    runner = str(parsed.pop("runner", DEFAULT_RUNNER))
    if sweep_dir is None:
        stem = Path(str(study)).stem
        sweep_dir = Path(default_root) / (f"{stem}-{short_hash(parsed)}" if parsed else stem)
    return SweepArgs(study=str(study), sweep_dir=Path(str(sweep_dir)), overrides=parsed,
                     launcher=HYDRA_LAUNCHER_NAMES[launcher_name], launcher_options=launcher_options,
                     select=select, runner=runner)


def _worker_main(argv: Sequence[str]) -> int:
    """Entry point of a local_gpus worker process: python -m wmquant.study.sweep --run-dir D --runner R."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m wmquant.study.sweep")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--runner", required=True)
    args = parser.parse_args(argv)
    try:
        execute_run(args.runner, args.run_dir)
    except WmquantError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
