"""Sweeps: resume after SIGKILL, failures, and the launchers (serial, local_gpus, submitit)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wmquant.errors import StudyError
from wmquant.study.spec import load_spec
from wmquant.study.store import ResultStore
from wmquant.study.sweep import make_submitit_executor, parse_sweep_args, run_sweep

FAKE = Path(__file__).with_name("fake_runner.py")
RUNNER = f"{FAKE}:run_one"
SPEC = """\
name: mini
env: wall
columns: [0, 1, 2]
base: {n_evals: 4, planner.max_iter: 3, a_bits: 16}
runs:
  - method: fp
  - grid:
      w_bits: [8, 4]
      method: [rtn, omse, awq]
"""
TWO_RUNS = "name: two\nenv: pusht\ncolumns: [0, 1]\nbase: {n_evals: 3, planner.max_iter: 2}\n" \
           "runs:\n  - method: fp\n  - {method: rtn, w_bits: 4, a_bits: 8}\n"


@pytest.fixture()
def spec_file(tmp_path):
    path = tmp_path / "mini.yaml"
    path.write_text(SPEC)
    return path


@pytest.fixture()
def two_runs_spec(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text(TWO_RUNS)
    return path


def _prepared_run(spec_path, sweep_dir, index):
    """A sweep directory bound to the spec, with run `index`'s run.json written: its run dir."""
    spec = load_spec(spec_path)
    store = ResultStore(sweep_dir)
    store.bind(spec, {}, spec.runs)
    return store.prepare_run(spec.runs[index])


@pytest.fixture()
def runner_log(tmp_path, monkeypatch):
    path = tmp_path / "invocations.log"
    monkeypatch.setenv("FAKE_RUNNER_LOG", str(path))
    monkeypatch.setenv("FAKE_RUNNER_SLEEP", "0")
    return path


def _events(log_path):
    if not log_path.exists():
        return []
    return [line.split()[:2] for line in log_path.read_text().splitlines() if line.strip()]


def _started(log_path):
    return [run_id for event, run_id in _events(log_path) if event == "start"]


def test_resume_after_sigkill_recomputes_nothing_complete(tmp_path, spec_file, runner_log):
    sweep_dir = tmp_path / "sweep"
    code = (f"from wmquant.study.sweep import run_sweep; "
            f"run_sweep({str(spec_file)!r}, {str(sweep_dir)!r}, runner={RUNNER!r})")
    env = {**os.environ, "FAKE_RUNNER_SLEEP": "0.4"}
    process = subprocess.Popen([sys.executable, "-c", code], env=env)
    deadline = time.time() + 60
    while len(_started(runner_log)) < 3 and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.6)  # the third run is now halfway through writing its result
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(_started(runner_log)) >= 3, "the sweep did not get far enough before the kill"

    store = ResultStore(sweep_dir)
    done_before = {run_id for event, run_id in _events(runner_log) if event == "done"}
    complete_before = store.completed()
    assert len(done_before) >= 2 and done_before <= complete_before <= set(_started(runner_log))
    assert store.load_results()[1] == []  # the killed writer left no partial result.json
    for leftover in store.runs_dir.glob("*/.tmp-*"):  # a write cut short never shows a result
        assert not (leftover.parent / "result.json").exists()

    summary = run_sweep(spec_file, sweep_dir, runner=RUNNER)
    planned = summary.planned
    assert len(planned) == 7 and summary.complete
    assert set(summary.skipped) == complete_before
    assert set(summary.succeeded) == set(planned) - complete_before
    starts = _started(runner_log)
    for run_id in complete_before:
        assert starts.count(run_id) == 1, f"{run_id} was recomputed"
    results, corrupt = store.load_results()
    assert corrupt == [] and sorted(r["run_id"] for r in results) == sorted(planned)
    assert len([d for d in store.runs_dir.iterdir() if d.is_dir()]) == len(planned)
    assert not list(store.runs_dir.glob("*/.tmp-*"))

    again = run_sweep(spec_file, sweep_dir, runner=RUNNER)
    assert sorted(again.skipped) == sorted(planned) and again.succeeded == []
    assert _started(runner_log) == starts


def test_failed_runs_are_recorded_and_retried(tmp_path, spec_file, runner_log, monkeypatch):
    monkeypatch.setenv("FAKE_RUNNER_FAIL", "omse")
    summary = run_sweep(spec_file, tmp_path / "s", runner=RUNNER)
    failed = sorted(summary.failed)
    assert len(failed) == 2 and all(f.startswith("omse") for f in failed)
    assert "planned failure" in summary.failed[failed[0]] and len(summary.succeeded) == 5
    store = ResultStore(tmp_path / "s")
    # the summary gives the recorded one-line message (error.json), with the exception's type
    assert store.failures() == summary.failed == {f: f"RuntimeError: planned failure of {f}" for f in failed}
    assert [r.run_id for r in store.planned_runs()] == summary.planned  # the directory is bound to the spec
    other = tmp_path / "other.yaml"
    other.write_text(TWO_RUNS)
    with pytest.raises(StudyError, match="belongs to study 'mini'"):
        run_sweep(other, tmp_path / "s", runner=RUNNER)
    monkeypatch.delenv("FAKE_RUNNER_FAIL")
    retry = run_sweep(spec_file, tmp_path / "s", runner=RUNNER)
    assert sorted(retry.succeeded) == failed and retry.complete and store.failures() == {}


def test_invalid_result_from_a_runner_is_a_failure(tmp_path, spec_file, runner_log):
    summary = run_sweep(spec_file, tmp_path / "s", runner=f"{FAKE}:run_invalid", select={"method": "rtn"})
    assert len(summary.failed) == 3 and all("invalid" in reason for reason in summary.failed.values())
    assert ResultStore(tmp_path / "s").completed() == set()


def test_runner_that_only_returns_gets_its_result_written(tmp_path, spec_file):
    summary = run_sweep(spec_file, tmp_path / "s", runner=f"{FAKE}:run_returning_only")
    assert summary.complete and len(ResultStore(tmp_path / "s").completed()) == 7


def test_bad_sweep_requests_fail_before_anything_runs(tmp_path, spec_file):
    with pytest.raises(StudyError, match="unknown launcher 'pbs'"):
        run_sweep(spec_file, tmp_path / "a", runner=RUNNER, launcher="pbs")
    with pytest.raises(StudyError, match="cannot import runner"):
        run_sweep(spec_file, tmp_path / "b", runner="wmquant.study.no_such_module:run_one")
    with pytest.raises(StudyError, match="has no function 'nope'"):
        run_sweep(spec_file, tmp_path / "c", runner=f"{FAKE}:nope")
    with pytest.raises(StudyError, match="unknown local_gpus option 'gpu'"):
        run_sweep(spec_file, tmp_path / "d", runner=RUNNER, launcher="local_gpus", launcher_options={"gpu": 1})
    with pytest.raises(StudyError, match="unknown hydra.launcher option 'queue'"):
        run_sweep(spec_file, tmp_path / "e", runner=RUNNER, launcher="submitit_local", launcher_options={"queue": 1})
    with pytest.raises(StudyError, match="serial launcher takes no options"):
        run_sweep(spec_file, tmp_path / "f", runner=RUNNER, launcher_options={"timeout_min": 1})
    assert not any((tmp_path / name).exists() for name in "abcdef")


def test_two_job_sweep_through_submitit_local_executor(tmp_path, two_runs_spec, runner_log, monkeypatch):
    spec = two_runs_spec
    sweep_dir = tmp_path / "sweep"
    monkeypatch.setenv("FAKE_RUNNER_FAIL", "rtn")
    summary = run_sweep(spec, sweep_dir, runner=RUNNER, launcher="submitit_local",
                        launcher_options={"timeout_min": 2, "cpus_per_task": 1})
    rtn = next(run_id for run_id in summary.planned if run_id.startswith("rtn"))
    assert summary.succeeded == [r for r in summary.planned if r != rtn], str(summary)
    assert summary.failed == {rtn: f"RuntimeError: planned failure of {rtn}"}
    store = ResultStore(sweep_dir)
    results, corrupt = store.load_results()
    assert corrupt == [] and {r["method"] for r in results} == {"fp"}
    assert list((sweep_dir / ".submitit").glob("*/*_log.out")), "submitit kept no job logs"
    # Each job ran in its own process: the runner's log has one start per run.
    assert sorted(_started(runner_log)) == sorted(summary.planned)
    monkeypatch.delenv("FAKE_RUNNER_FAIL")
    resumed = run_sweep(spec, sweep_dir, runner=RUNNER, launcher="submitit_local")
    assert resumed.skipped == [r for r in summary.planned if r != rtn] and resumed.succeeded == [rtn]
    assert len(_started(runner_log)) == 3 and resumed.complete


def test_local_gpus_pins_one_device_per_worker(tmp_path, two_runs_spec, runner_log, monkeypatch):
    spec = two_runs_spec
    monkeypatch.setenv("FAKE_RUNNER_SLEEP", "0.3")
    summary = run_sweep(spec, tmp_path / "gpus", runner=RUNNER, launcher="local_gpus",
                        launcher_options={"gpus": "0,1"})
    assert summary.complete and len(summary.succeeded) == 2
    devices = {line.split("cuda=")[1] for line in runner_log.read_text().splitlines() if line.startswith("start")}
    assert devices == {"0", "1"}
    assert all((tmp_path / "gpus" / "runs" / run_id / "log.txt").exists() for run_id in summary.planned)


def test_local_gpus_without_gpus_uses_one_cpu_worker(tmp_path, two_runs_spec, runner_log, monkeypatch):
    spec = two_runs_spec
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    summary = run_sweep(spec, tmp_path / "cpu", runner=RUNNER, launcher="local_gpus")
    assert summary.complete
    lines = [line for line in runner_log.read_text().splitlines() if line.startswith("start")]
    assert len(lines) == 2 and all(line.endswith("cuda=") for line in lines)


def test_submitit_slurm_takes_the_hydra_plugin_keys(tmp_path, monkeypatch):
    options = {"partition": "gpu", "gpus_per_node": 2, "timeout_min": 240, "cpus_per_task": 8, "mem_gb": 64,
               "additional_parameters": {"mail-type": "END"}}
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(StudyError, match="cannot use submitit_slurm"):
        make_submitit_executor("slurm", options, tmp_path, "wmquant-t")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake_bin))
    executor = make_submitit_executor("slurm", options, tmp_path, "wmquant-t")
    script = executor._executor._make_submission_file_text("echo run", "uid")
    for line in ("--partition=gpu", "--gpus-per-node=2", "--time=240", "--cpus-per-task=8", "--mem=64GB",
                 "--job-name=wmquant-t", "--mail-type=END", "--signal=USR2@120"):
        assert f"#SBATCH {line}" in script
    assert str(tmp_path / ".submitit") in script
    with pytest.raises(StudyError, match="unknown hydra.launcher option 'partion'.*valid:.*partition"):
        make_submitit_executor("slurm", {"partion": "gpu"}, tmp_path, "x")


def test_submitit_parameters_prefix_only_the_cluster_specific_keys(tmp_path):
    from wmquant.study.sweep import submitit_parameters

    folder, init, parameters = submitit_parameters(
        "slurm", {"partition": "gpu", "timeout_min": 240, "gpus_per_node": 2, "max_num_timeout": 3},
        tmp_path, "wmquant-t")
    assert folder == str(tmp_path / ".submitit" / "%j") and init == {"slurm_max_num_timeout": 3}
    assert parameters["slurm_partition"] == "gpu" and "partition" not in parameters
    assert (parameters["timeout_min"], parameters["gpus_per_node"], parameters["name"]) == (240, 2, "wmquant-t")
    assert not any(key.startswith("slurm_slurm") for key in parameters)


def test_parse_sweep_args():
    args = parse_sweep_args(["study=table1", "model_name=wall", "n_evals=10", "planner.max_iter=5",
                             "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                             "hydra.launcher.gpus_per_node=1", "select.method=rtn,omse"], default_root="out")
    assert (args.study, args.launcher) == ("table1", "submitit_slurm")
    assert args.overrides == {"model_name": "wall", "n_evals": 10, "planner.max_iter": 5}
    assert args.launcher_options == {"partition": "gpu", "gpus_per_node": 1}
    assert args.select == {"method": ["rtn", "omse"]}
    assert args.sweep_dir.parent == Path("out") and args.sweep_dir.name.startswith("table1-")
    same = parse_sweep_args(["n_evals=10", "study=table1", "planner.max_iter=5", "model_name=wall"], "out")
    assert same.sweep_dir == args.sweep_dir  # the same command resumes the same sweep
    plain = parse_sweep_args(["study=table2", "hydra.sweep.dir=/x/y"])
    assert (plain.sweep_dir, plain.launcher, plain.overrides) == (Path("/x/y"), "serial", {})
    with pytest.raises(StudyError, match="needs study="):
        parse_sweep_args(["n_evals=3"])
    with pytest.raises(StudyError, match="unknown hydra/launcher 'joblib'"):
        parse_sweep_args(["study=table1", "hydra/launcher=joblib"])


def test_runner_may_be_given_as_a_function(tmp_path, two_runs_spec, runner_log):
    import fake_runner

    from wmquant.study.sweep import runner_reference

    assert runner_reference(fake_runner.run_one) == f"{FAKE.resolve()}:run_one"
    assert runner_reference(runner_reference) == "wmquant.study.sweep:runner_reference"
    with pytest.raises(StudyError, match="module-level function"):
        runner_reference(lambda overrides, run_dir: None)
    spec = two_runs_spec
    summary = run_sweep(spec, tmp_path / "s", runner=fake_runner.run_one, launcher="local_gpus")
    assert summary.complete and len(summary.succeeded) == 2


def test_a_study_run_is_tagged_with_its_run_id_unless_the_spec_sets_a_tag(tmp_path):
    from wmquant.study.runner import compose_run_config

    run_dir = tmp_path / "runs" / "rtn_w4a8-0123abcd"
    assert compose_run_config({"env": "wall", "quant": True}, run_dir).tag == "rtn_w4a8-0123abcd"
    assert compose_run_config({"env": "wall", "tag": "mine"}, run_dir).tag == "mine"
    assert compose_run_config({"env": "wall"}).tag == "fp"


def test_a_sweep_with_progress_reports_every_finished_run(tmp_path, spec_file, runner_log, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_RUNNER_FAIL", "omse")
    summary = run_sweep(spec_file, tmp_path / "s", runner=RUNNER, progress=True)
    err = capsys.readouterr().err
    results = {r["run_id"]: r for r in ResultStore(tmp_path / "s").load_results()[0]}
    for run_id in summary.succeeded:
        rate = results[run_id]["success_rate_by_iter"][-1]
        assert f"{run_id}: success {rate:.2f} after 3 MPC iterations, 0 s\n" in err
    for run_id in summary.failed:
        assert f"{run_id}: failed: " in err
    assert "7/7" in err  # the bar over the runs reached the end
    monkeypatch.delenv("FAKE_RUNNER_FAIL")
    run_sweep(spec_file, tmp_path / "s", runner=RUNNER, progress=True)
    assert "5 of 7 runs already complete" in capsys.readouterr().err


def test_a_local_gpus_run_past_its_timeout_is_killed_and_resumes_later(tmp_path, two_runs_spec, runner_log, monkeypatch):
    """timeout_min kills the worker's process group; the run is a failure, and the next sweep runs
    it again from scratch, removing what a killed writer left."""
    spec = two_runs_spec
    monkeypatch.setenv("FAKE_RUNNER_SLEEP", "60")
    started = time.time()
    summary = run_sweep(spec, tmp_path / "s", runner=RUNNER, launcher="local_gpus",
                        launcher_options={"gpus": "0", "timeout_min": 0.03})  # 1.8 s
    assert time.time() - started < 30  # killed, not waited for
    assert sorted(summary.failed) == sorted(summary.planned)
    assert set(summary.failed.values()) == {"timed out after 0.03 min"}
    store = ResultStore(tmp_path / "s")
    assert store.completed() == set()
    leftover = store.run_dir(summary.planned[0]) / ".tmp-result.json.killed"
    leftover.write_text('{"half": ')
    monkeypatch.setenv("FAKE_RUNNER_SLEEP", "0")
    retry = run_sweep(spec, tmp_path / "s", runner=RUNNER, launcher="local_gpus", launcher_options={"gpus": "0"})
    assert retry.complete and sorted(retry.succeeded) == sorted(summary.planned)
    assert not leftover.exists()


def test_local_gpus_runs_jobs_per_gpu_workers_on_each_device(tmp_path, runner_log, monkeypatch):
    spec = tmp_path / "mini.yaml"
    spec.write_text(SPEC)
    started = time.time()
    summary = run_sweep(spec, tmp_path / "s", runner=RUNNER, launcher="local_gpus",
                        launcher_options={"gpus": [3], "jobs_per_gpu": 4}, select={"method": "rtn"})
    assert summary.complete and len(summary.succeeded) == 3
    devices = [line.split("cuda=")[1] for line in runner_log.read_text().splitlines() if line.startswith("start")]
    assert devices == ["3"] * 3
    # a run that ends within its timeout is not killed (it takes over 1.2 s, so a timeout read as
    # 1 s instead of 1 min would kill it)
    monkeypatch.setenv("FAKE_RUNNER_SLEEP", "0.6")
    within = run_sweep(spec, tmp_path / "u", runner=RUNNER, launcher="local_gpus",
                       launcher_options={"gpus": [3], "timeout_min": 1}, select={"method": "fp"})
    assert within.complete and within.failed == {}
    with pytest.raises(StudyError, match="jobs_per_gpu must be a positive integer, got 0"):
        run_sweep(spec, tmp_path / "t", runner=RUNNER, launcher="local_gpus", launcher_options={"jobs_per_gpu": 0})
    assert time.time() - started < 60


@pytest.mark.parametrize("declared, expected", [("0,1", ["0", "1"]), (" 2 , ,3", ["2", "3"]), ("-1", []), ("", [])])
def test_visible_gpus_reads_cuda_visible_devices(declared, expected, monkeypatch):
    from wmquant.study.sweep import visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", declared)
    assert visible_gpus() == expected


def test_a_worker_process_exits_2_with_one_line_for_a_bad_runner_and_0_for_a_good_one(tmp_path, two_runs_spec):
    run_dir = _prepared_run(two_runs_spec, tmp_path / "s", 0)
    store = ResultStore(tmp_path / "s")
    command = [sys.executable, "-m", "wmquant.study.sweep", "--run-dir", str(run_dir), "--runner"]
    bad = subprocess.run(command + [f"{FAKE}:nope"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"error: runner '{FAKE}:nope': {FAKE} has no function 'nope'"]
    assert "has no function" in store.failures()[run_dir.name]
    good = subprocess.run(command + [RUNNER], capture_output=True, text=True, timeout=120)
    assert good.returncode == 0 and store.completed() == {run_dir.name}
    assert not (run_dir / "error.json").exists()  # a success clears the last failure


def test_execute_run_reports_its_seconds_and_imports_a_runner_file_once(tmp_path, two_runs_spec):
    from wmquant.study.sweep import execute_run, resolve_runner

    assert resolve_runner(RUNNER) is resolve_runner(RUNNER)  # the file is executed once, then reused
    run_dir = _prepared_run(two_runs_spec, tmp_path / "s", 1)
    started = time.time()
    report = execute_run(RUNNER, run_dir)
    elapsed = time.time() - started
    assert report["run_id"] == run_dir.name and report["status"] == "done"
    assert 0.0 <= report["seconds"] <= elapsed


def test_local_gpus_takes_its_devices_from_cuda_visible_devices_by_default(tmp_path, two_runs_spec, runner_log, monkeypatch):
    spec = two_runs_spec
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4")
    assert run_sweep(spec, tmp_path / "s", runner=RUNNER, launcher="local_gpus").complete
    assert [line.split("cuda=")[1] for line in runner_log.read_text().splitlines() if line.startswith("start")] == ["4", "4"]


def test_a_failure_without_error_file_falls_back_to_one_short_line(tmp_path):
    from wmquant.study.sweep import _failure_message

    text = _failure_message(tmp_path, "worker exited\n   with code 9 " + "x" * 600)
    assert text.startswith("worker exited with code 9 x") and len(text) == 500 and "\n" not in text
    (tmp_path / "error.json").write_text('{"message": "CUDA out of memory"}')
    assert _failure_message(tmp_path, "fallback") == "CUDA out of memory"
    (tmp_path / "error.json").write_text('{"mess')
    assert _failure_message(tmp_path, "fallback") == "fallback"


def test_the_serial_launcher_logs_each_run_by_its_place(tmp_path, spec_file, runner_log, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="wmquant.study"):
        summary = run_sweep(spec_file, tmp_path / "s", runner=RUNNER)
    places = [r.getMessage().split()[0] for r in caplog.records if r.getMessage().startswith("[")]
    assert places == [f"[{k}/7]" for k in range(1, 8)] and summary.complete


def test_an_interrupted_local_gpus_sweep_takes_its_running_jobs_down(tmp_path, two_runs_spec, runner_log):
    spec = two_runs_spec
    sweep_dir = tmp_path / "s"
    code = (f"from wmquant.study.sweep import run_sweep; run_sweep({str(spec)!r}, {str(sweep_dir)!r}, "
            f"runner={RUNNER!r}, launcher='local_gpus', launcher_options={{'gpus': '0'}})")
    process = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "FAKE_RUNNER_SLEEP": "1"},
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not _started(runner_log) and time.time() < deadline:
        time.sleep(0.05)
    assert _started(runner_log), "the worker never started"
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)
    time.sleep(4)  # past the worker's own end (two 1 s pauses), had it been left running
    assert [event for event, _ in _events(runner_log)] == ["start"]
    assert ResultStore(sweep_dir).completed() == set()


def test_a_worker_that_cannot_start_is_a_failure_with_its_reason(tmp_path, two_runs_spec, monkeypatch):
    from wmquant.study import sweep

    def refuse(*args, **kwargs):
        raise OSError("exec format error")

    spec = two_runs_spec
    monkeypatch.setattr(sweep.subprocess, "Popen", refuse)
    summary = run_sweep(spec, tmp_path / "s", runner=RUNNER, launcher="local_gpus", launcher_options={"gpus": "0"})
    assert summary.failed == {run_id: "could not start a worker process: exec format error" for run_id in summary.planned}


def test_an_interrupted_local_gpus_launch_starts_no_further_runs(tmp_path, monkeypatch):
    """Interrupting run_sweep in a process that lives on (a notebook, a service) must stop its
    worker threads from taking further runs off the queue."""
    from wmquant.study import sweep

    calls = []

    def fake_job(runner, run_dir, device, timeout_s, register):
        calls.append(run_dir)
        time.sleep(0.5)
        return 0

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "_run_in_subprocess", fake_job)
    summary = sweep.SweepSummary(sweep_dir=tmp_path, spec="s", launcher="local_gpus", planned=[])
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.7)
        with pytest.raises(KeyboardInterrupt):
            sweep._launch_local_gpus("r:f", [tmp_path / f"run{i}" for i in range(6)], {"gpus": "0"}, summary)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    time.sleep(2.0)  # four more runs would have started by now
    assert len(calls) <= 3
