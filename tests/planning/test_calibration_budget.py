"""Calibration's size and CEM budget are keys of their own (n_calib, calib_planner.*), shown before
calibration starts and recorded in the result."""

from __future__ import annotations

import json

import pytest

from wmquant.cli import main
from wmquant.configs import compose_config
from wmquant.models.checkpoint import shipped_model_names
from wmquant.planning.session import PlanningSession

pytestmark = pytest.mark.skipif("wall" not in shipped_model_names(), reason="the shipped Wall model is missing")

TINY = ["n_evals=2", "planner.max_iter=1", "planner.sub_planner.num_samples=8", "planner.sub_planner.topk=2",
        "planner.sub_planner.opt_steps=1", "save_plots=false", "quant_iter=1", "engine.device=cpu"]


def test_calibration_budget_falls_back_to_the_evaluation_planner():
    session = PlanningSession(compose_config("plan_wall", [*TINY, "calib_planner.opt_steps=3"]))
    assert session.calibration_episode_count() == 2
    assert session.calibration_budget() == {"num_samples": 8, "topk": 2, "opt_steps": 3}
    planner = session.planner(session.calibration_budget())
    assert (planner.config.num_samples, planner.config.topk, planner.config.opt_steps) == (8, 2, 3)
    assert session.planner().config.opt_steps == 1  # evaluation keeps its own budget


def test_quant_calibrates_on_n_calib_episodes_with_its_own_budget(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["quant", "method=rtn", "predictor_wbit=8", "predictor_abit=8", "encoder_wbit=8", "encoder_abit=8", *TINY,
                 "n_calib=3", "calib_planner.num_samples=12", "calib_planner.topk=3", f"output_dir={out}"])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert len(result["calibration_seeds"]) == 3 and len(result["eval_seeds"]) == 2
    assert result["quant"]["calibration"] == {"episodes": 3, "mpc_iterations": 1, "seed_offset": 0, "num_samples": 12,
                                              "topk": 3, "opt_steps": 1}
    err = capsys.readouterr().err
    assert "calibration: 3 episodes" in err
    assert "calibration: 1 planning pass(es) (observe activation ranges); their planning is expected to take about" in err


def test_plan_time_estimate_scales_with_iterations_and_steps():
    session = PlanningSession(compose_config("plan_wall", [*TINY, "n_calib=2"]))
    episodes, env = session.episodes("calibration")
    env.close()
    one = session.estimate_plan_seconds(episodes, 1, {"num_samples": 8, "topk": 2, "opt_steps": 1})
    assert one > 0
    many = [session.estimate_plan_seconds(episodes, 40, {"num_samples": 8, "topk": 2, "opt_steps": 10}) for _ in range(3)]
    assert min(many) > 40 * one  # 400 evaluations against 1: timing noise cannot close that gap


@pytest.mark.parametrize("override, fragment", [
    ("n_calib=0", "n_calib"),
    ("calib_planner.topk=20", "calib_planner.topk"),
])
def test_bad_calibration_keys_are_refused(override, fragment, tmp_path, capsys):
    assert main(["quant", "method=rtn", *TINY, override, f"output_dir={tmp_path / 'x'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1


def test_calibration_replicates_draw_disjoint_episodes(tmp_path):
    from wmquant.planning.episodes import calibration_seeds, evaluation_seeds

    first, second = calibration_seeds(99, 50), calibration_seeds(99, 50, replicate=1)
    assert second[0] == 99 * 50 + 2 and not set(first) & set(second)
    assert not (set(first) | set(second)) & set(evaluation_seeds(99, 200))
    session = PlanningSession(compose_config("plan_wall", [*TINY, "calib_seed_offset=2"]))
    episodes, env = session.episodes("calibration")
    env.close()
    assert list(episodes.seeds) == calibration_seeds(99, 2, replicate=2)
    assert main(["quant", "method=rtn", *TINY, "calib_seed_offset=-1", f"output_dir={tmp_path / 'x'}"]) == 2
    assert not (tmp_path / "x").exists()
