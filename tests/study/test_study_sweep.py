"""Sweeps: resume after SIGKILL, failures, and the launchers (serial, local_gpus, submitit)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wmquant.errors import StudyError
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
    assert set(store.failures()) == set(failed)
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


def test_two_job_sweep_through_submitit_local_executor(tmp_path, runner_log):
    spec = tmp_path / "two.yaml"
    spec.write_text(TWO_RUNS)
    sweep_dir = tmp_path / "sweep"
    summary = run_sweep(spec, sweep_dir, runner=RUNNER, launcher="submitit_local",
                        launcher_options={"timeout_min": 2, "cpus_per_task": 1})
    assert summary.complete and len(summary.succeeded) == 2, str(summary)
    store = ResultStore(sweep_dir)
    results, corrupt = store.load_results()
    assert corrupt == [] and {r["method"] for r in results} == {"fp", "rtn"}
    assert list((sweep_dir / ".submitit").glob("*/*_log.out")), "submitit kept no job logs"
    # Each job ran in its own process: the runner's log has one start per run.
    assert sorted(_started(runner_log)) == sorted(summary.planned)
    resumed = run_sweep(spec, sweep_dir, runner=RUNNER, launcher="submitit_local")
    assert sorted(resumed.skipped) == sorted(summary.planned) and len(_started(runner_log)) == 2


def test_local_gpus_pins_one_device_per_worker(tmp_path, runner_log, monkeypatch):
    spec = tmp_path / "two.yaml"
    spec.write_text(TWO_RUNS)
    monkeypatch.setenv("FAKE_RUNNER_SLEEP", "0.3")
    summary = run_sweep(spec, tmp_path / "gpus", runner=RUNNER, launcher="local_gpus",
                        launcher_options={"gpus": "0,1"})
    assert summary.complete and len(summary.succeeded) == 2
    devices = {line.split("cuda=")[1] for line in runner_log.read_text().splitlines() if line.startswith("start")}
    assert devices == {"0", "1"}
    assert all((tmp_path / "gpus" / "runs" / run_id / "log.txt").exists() for run_id in summary.planned)


def test_local_gpus_without_gpus_uses_one_cpu_worker(tmp_path, runner_log, monkeypatch):
    spec = tmp_path / "two.yaml"
    spec.write_text(TWO_RUNS)
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


def test_runner_may_be_given_as_a_function(tmp_path, runner_log):
    import fake_runner

    from wmquant.study.sweep import runner_reference

    assert runner_reference(fake_runner.run_one) == f"{FAKE.resolve()}:run_one"
    assert runner_reference(runner_reference) == "wmquant.study.sweep:runner_reference"
    with pytest.raises(StudyError, match="module-level function"):
        runner_reference(lambda overrides, run_dir: None)
    spec = tmp_path / "two.yaml"
    spec.write_text(TWO_RUNS)
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
    for run_id in summary.succeeded:
        assert f"{run_id}: success " in err and "MPC iterations" in err
    for run_id in summary.failed:
        assert f"{run_id}: failed: " in err
    assert "7/7" in err  # the bar over the runs reached the end
    monkeypatch.delenv("FAKE_RUNNER_FAIL")
    run_sweep(spec_file, tmp_path / "s", runner=RUNNER, progress=True)
    assert "5 of 7 runs already complete" in capsys.readouterr().err
