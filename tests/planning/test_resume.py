"""Resumable MPC: a run interrupted after some iterations continues from mpc_state.npz and ends with
exactly the result of an uninterrupted run."""

import json

import numpy as np
import pytest

from wmquant.cli import main
from wmquant.planning import runs
from wmquant.planning.checkpoint import CHECKPOINT_FILE

WALL_PLANNER = ["--config-name", "plan_wall.yaml", "model_name=wall", "planner.sub_planner.num_samples=30",
                "planner.sub_planner.topk=5", "planner.sub_planner.opt_steps=2", "save_plots=false", "engine.device=cpu"]
# 6 episodes, of which 0, 2, 5, 6, 6 have succeeded after MPC iterations 1-5: an interruption after
# iteration 2 leaves some episodes done and some active (the smallest budget that does; ~5 s a run)
WALL = [*WALL_PLANNER, "n_evals=6", "planner.max_iter=5"]
PUSHT = ["--config-name", "plan_pusht.yaml", "model_name=pusht", "goal_source=random_state", "n_evals=3",
         "planner.max_iter=3", "planner.sub_planner.num_samples=20", "planner.sub_planner.topk=5",
         "planner.sub_planner.opt_steps=2", "save_plots=false", "engine.device=cpu"]
# Where a test needs no mix of finished and active episodes: 2 episodes, 3 iterations (~2 s a run)
SMALL_WALL = [*WALL_PLANNER, "n_evals=2", "planner.max_iter=3"]
MEASURED = ("success_by_iter", "success_rate_by_iter", "latent_mse_by_iter", "planning_loss_by_iter", "eval_seeds")


class Killed(Exception):
    """Stands in for a time limit that ends the process after some MPC iteration."""


def _interrupt_after(monkeypatch, iterations):
    real = runs.progress_writer

    def writer(run_dir, started):
        write = real(run_dir, started)

        def write_then_die(iteration, trace):
            write(iteration, trace)
            if iteration + 1 == iterations:
                raise Killed
        return write_then_die
    monkeypatch.setattr(runs, "progress_writer", writer)


def _result(path):
    return json.loads((path / "result.json").read_text())


@pytest.mark.parametrize("args, stop_after", [(WALL, 2), (PUSHT, 1)], ids=["wall", "pusht"])
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, capsys, args, stop_after):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert main(["plan", *args, f"output_dir={reference}", "resume=false"]) == 0

    with monkeypatch.context() as patch:
        _interrupt_after(patch, stop_after)
        with pytest.raises(Killed):
            main(["plan", *args, f"output_dir={resumed}"])
    assert not (resumed / "result.json").exists() and (resumed / CHECKPOINT_FILE).exists()
    progress = json.loads((resumed / "progress.json").read_text())
    assert progress["iterations_done"] == stop_after
    assert len(progress["iteration_seconds"]) == stop_after and all(t > 0 for t in progress["iteration_seconds"])

    capsys.readouterr()
    assert main(["plan", *args, f"output_dir={resumed}"]) == 0
    assert f"MPC iterations 1-{stop_after} are done" in capsys.readouterr().err  # the run says it resumed
    first, second = _result(reference), _result(resumed)
    assert {k: first[k] for k in MEASURED} == {k: second[k] for k in MEASURED}
    assert (reference / "logs.json").read_text() == (resumed / "logs.json").read_text()  # upstream's JSON lines
    assert second["resumed"]["from_iteration"] == stop_after and "resumed" not in first
    progress = json.loads((resumed / "progress.json").read_text())  # the resumed process times its own iterations
    assert len(progress["iteration_seconds"]) == progress["iterations_done"] - stop_after
    assert not (resumed / CHECKPOINT_FILE).exists()  # removed once the result is written
    if args is WALL:  # the replay had to step only the episodes that were still active
        rates = np.array(first["success_rate_by_iter"])
        assert 0 < rates[stop_after - 1] < 1


def test_a_checkpoint_of_another_run_is_not_continued(tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 2)
        with pytest.raises(Killed):
            main(["plan", *SMALL_WALL, f"output_dir={out}"])
    # Another CEM variance: the checkpoint's fingerprint differs, so planning starts over.
    assert main(["plan", *SMALL_WALL, f"output_dir={out}", "planner.sub_planner.var_scale=0.5"]) == 0
    assert "resumed" not in _result(out)
    fresh = tmp_path / "fresh"
    assert main(["plan", *SMALL_WALL, f"output_dir={fresh}", "planner.sub_planner.var_scale=0.5"]) == 0
    assert _result(out)["success_by_iter"] == _result(fresh)["success_by_iter"]


@pytest.mark.parametrize("args", [WALL, PUSHT], ids=["wall", "pusht"])
def test_an_interrupted_ceiling_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, capsys, args):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    args = [*args, "planner.max_iter=4"]
    assert main(["ceiling", *args, f"output_dir={reference}", "resume=false"]) == 0
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 1)
        with pytest.raises(Killed):
            main(["ceiling", *args, f"output_dir={resumed}"])
    assert (resumed / CHECKPOINT_FILE).exists() and not (resumed / "result.json").exists()
    capsys.readouterr()
    assert main(["ceiling", *args, f"output_dir={resumed}"]) == 0
    assert "continuing at iteration 2 of 4" in capsys.readouterr().err
    first, second = _result(reference), _result(resumed)
    assert first["success_by_iter"] == second["success_by_iter"]
    assert second["resumed"]["from_iteration"] == 1 and not (resumed / CHECKPOINT_FILE).exists()


def _corrupt_saved_states(path):
    """Shift the checkpoint's current env states, keeping its fingerprint: the replay cannot match them."""
    with np.load(path, allow_pickle=False) as data:
        payload = {k: data[k] for k in data.files}
    payload["episode_cur_states"] = payload["episode_cur_states"] + 1.0
    with open(path, "wb") as fh:
        np.savez(fh, **payload)


@pytest.mark.parametrize("command", ["plan", "ceiling"])
def test_a_checkpoint_the_replay_cannot_reproduce_starts_over(tmp_path, monkeypatch, command, caplog):
    reference, broken = tmp_path / "reference", tmp_path / "broken"
    assert main([command, *SMALL_WALL, f"output_dir={reference}", "resume=false"]) == 0
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 2)
        with pytest.raises(Killed):
            main([command, *SMALL_WALL, f"output_dir={broken}"])
    _corrupt_saved_states(broken / CHECKPOINT_FILE)
    with caplog.at_level("WARNING", logger="wmquant.planning"):
        assert main([command, *SMALL_WALL, f"output_dir={broken}"]) == 0
    assert "did not reproduce its states" in caplog.text
    first, second = _result(reference), _result(broken)
    assert "resumed" not in second
    # From the initial states again, not from where the replay left the envs.
    assert first["success_by_iter"] == second["success_by_iter"]


def test_fingerprint_hashes_scalar_and_fp8_tensors():
    import torch

    from wmquant.planning.checkpoint import fingerprint

    def module(scale: float, element: float) -> torch.nn.Module:
        m = torch.nn.Module()
        m.register_buffer("input_scale", torch.tensor(scale))  # 0-dim, as a real layer's static range
        m.register_buffer("qweight", torch.full((2, 3), element).to(torch.float8_e4m3fn))
        return m

    base = fingerprint({"a": 1}, module(0.5, 1.0), [1, 2])
    assert base == fingerprint({"a": 1}, module(0.5, 1.0), [1, 2])
    assert base != fingerprint({"a": 1}, module(0.25, 1.0), [1, 2])
    assert base != fingerprint({"a": 1}, module(0.5, 2.0), [1, 2])
