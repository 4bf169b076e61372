"""Open-loop error over the planning horizon: the model's latent rollout under the true actions
against the encodings of the frames the env reached."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wmquant.cli import main
from wmquant.configs import compose_config
from wmquant.diagnose.open_loop import open_loop_error
from wmquant.models.checkpoint import shipped_model_names
from wmquant.planning.session import PlanningSession

pytestmark = pytest.mark.skipif("pusht" not in shipped_model_names(), reason="the shipped PushT model is missing")


def test_open_loop_error_compares_the_rollout_with_the_reached_frames():
    import torch

    session = PlanningSession(compose_config("plan_pusht", ["model_name=pusht", "n_evals=3", "engine.device=cpu"]))
    episodes, env = session.episodes("evaluation")
    engine = session.engine
    by_hand = []
    try:
        report = open_loop_error(session, episodes, env)
        for i in range(3):  # step 5 (25 env steps) of each episode, one at a time
            raw = episodes.gt_actions[i : i + 1]
            obses, _ = env.rollout(episodes.init_states[i : i + 1], raw, indices=[i])
            actions = engine.normalization.normalize_actions(torch.as_tensor(raw, dtype=torch.float32)).reshape(1, 5, 10)
            predicted = engine.rollout(engine.encode({k: v[i : i + 1] for k, v in episodes.obs_0.items()}), actions)["visual"][0, 5]
            truth = engine.encode({k: v[:, -1] for k, v in obses.items()})["visual"][0, 0]
            by_hand.append(float((predicted - truth).pow(2).mean()))
    finally:
        env.close()
    assert report["horizon"] == 5 and [row["env_steps"] for row in report["by_step"]] == [5, 10, 15, 20, 25]
    assert report["by_step"][4]["visual_mse_mean"] == pytest.approx(np.mean(by_hand), rel=1e-4)
    assert all(row["visual_mse_mean"] > 0 and row["moved_mse_mean"] > 0 for row in report["by_step"])


def test_diagnose_rollout_command(tmp_path, capsys):
    code = main(["diagnose", "rollout", "--model", "pusht", "--goals", "2", "--device", "cpu", "--out", str(tmp_path)])
    assert code == 0
    assert "error / motion" in capsys.readouterr().out
    report = json.loads((tmp_path / "open_loop.json").read_text())
    assert report["episodes"] == 2 and len(report["by_step"]) == 5
