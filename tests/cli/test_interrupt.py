"""A run that is stopped (Ctrl-C, SIGTERM) before it wrote anything leaves no directory behind; one
that wrote something keeps it, so that it can be resumed."""

from __future__ import annotations

import os
import signal
import threading

import pytest

import wmquant.planning.runs as runs
from wmquant.cli import main
from wmquant.models.checkpoint import shipped_model_names

pytestmark = pytest.mark.skipif("wall" not in shipped_model_names(), reason="the shipped Wall model is missing")

TINY = ["--config-name", "plan_wall.yaml", "model_name=wall", "n_evals=1", "planner.max_iter=1",
        "planner.sub_planner.num_samples=8", "planner.sub_planner.topk=2", "planner.sub_planner.opt_steps=1",
        "save_plots=false", "engine.device=cpu"]


def _stop_while_planning(monkeypatch, stop, write_first: bool):
    def evaluate_and_write(cfg, session, run_dir, *args, **kwargs):
        if write_first:
            (run_dir / "progress.json").write_text("{}")
        stop()
        raise AssertionError("the stop did not interrupt the run")

    monkeypatch.setattr(runs, "evaluate_and_write", evaluate_and_write)


def _interrupt():
    raise KeyboardInterrupt


def _sigterm():
    # without the CLI's handler the signal would end the test process itself
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None), "no SIGTERM handler"
    os.kill(os.getpid(), signal.SIGTERM)
    threading.Event().wait(5)  # the handler raises before this returns


@pytest.mark.parametrize("stop, code, word", [(_interrupt, 130, "interrupted"), (_sigterm, 143, "terminated")])
def test_a_run_stopped_before_writing_leaves_no_directory(stop, code, word, tmp_path, monkeypatch, capsys):
    _stop_while_planning(monkeypatch, stop, write_first=False)
    out = tmp_path / "runs" / "first"
    assert main(["plan", *TINY, f"output_dir={out}"]) == code
    assert capsys.readouterr().err.strip().endswith(f"wmquant plan: {word}")
    assert not (tmp_path / "runs").exists()  # the parent it created went too


def test_a_run_stopped_after_writing_keeps_its_directory(tmp_path, monkeypatch):
    _stop_while_planning(monkeypatch, _interrupt, write_first=True)
    out = tmp_path / "run"
    assert main(["plan", *TINY, f"output_dir={out}"]) == 130
    assert (out / "progress.json").read_text() == "{}"


def test_an_existing_empty_output_dir_is_not_removed(tmp_path, monkeypatch):
    _stop_while_planning(monkeypatch, _interrupt, write_first=False)
    out = tmp_path / "mine"
    out.mkdir()
    assert main(["plan", *TINY, f"output_dir={out}"]) == 130
    assert out.is_dir()


def test_the_cli_restores_the_previous_sigterm_handler(tmp_path, monkeypatch):
    _stop_while_planning(monkeypatch, _interrupt, write_first=False)
    before = signal.getsignal(signal.SIGTERM)
    main(["plan", *TINY, f"output_dir={tmp_path / 'x'}"])
    assert signal.getsignal(signal.SIGTERM) is before
