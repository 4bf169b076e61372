"""The scripted PushT policies: the expert's data look like the official `pusht_noise` statistics and
the roaming pusher's do not; the expert reaches the goal pose; `--policy` is checked."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wmquant.cli import main
from wmquant.data import generate_dataset
from wmquant.data import pusht as pusht_data
from wmquant.data.pusht_policies import ExpertSettings, ScriptedExpert, make_policy
from wmquant.data.pusht_stats import compare_with_official, segment_distribution, statistics_table
from wmquant.envs import pusht as pusht_env
from wmquant.errors import ConfigError

SAMPLE = 24  # episodes: a few seconds of physics without rendering

# Looser than the 2000-episode acceptance bounds (0.25 std, 15 %: docs/pusht_data.md), for a small
# sample; the pusher's block spread (about 2x the official) fails them by far.
SAMPLE_MEAN_BOUND_STD = 0.4
SAMPLE_STD_BOUND = 0.3


def sample(policy: str, seed: int = 0) -> list[dict]:
    return [pusht_data.generate_episode(i, seed, pusht_data.default_steps(policy), None, policy) for i in range(SAMPLE)]


def within_sample_bounds(check) -> bool:
    mean_ok = not check.check_mean or abs(check.mean_offset_std) <= SAMPLE_MEAN_BOUND_STD
    return mean_ok and abs(check.std_ratio - 1.0) <= SAMPLE_STD_BOUND


@pytest.fixture(scope="module")
def expert_episodes():
    return sample("expert")


def test_expert_statistics_match_the_official_ones_and_the_pushers_do_not(expert_episodes):
    expert = compare_with_official(expert_episodes)
    assert all(within_sample_bounds(c) for c in expert), statistics_table(expert)
    pusher = {c.name: c for c in compare_with_official(sample("pusher"))}
    assert not within_sample_bounds(pusher["block x"]) and not within_sample_bounds(pusher["block y"])
    assert pusher["block x"].std_ratio > 1.5 and pusher["block y"].std_ratio > 1.5


def test_expert_reaches_the_goal_pose_and_ends_after_hovering(expert_episodes):
    reached = [e for e in expert_episodes if e["reached_goal"]]
    assert len(reached) >= 0.75 * SAMPLE
    # an episode that reaches the goal late is cut at the cap while it backs off or hovers
    stopped = [e for e in reached if len(e["states"]) < pusht_data.EXPERT_MAX_STEPS]
    assert len(stopped) >= 0.6 * SAMPLE
    assert all(e["reached_goal"] for e in expert_episodes if len(e["states"]) < pusht_data.EXPERT_MAX_STEPS)
    settings = ExpertSettings()
    for episode in stopped:
        states = episode["states"].astype(np.float64)
        position = np.linalg.norm(states[:, 2:4] - np.asarray(pusht_env.GOAL_POSE[:2]), axis=1)
        angle = pusht_env.wrapped_angle_difference(states[:, 4], pusht_env.GOAL_POSE[2])
        at_goal = np.flatnonzero((position < settings.goal_position_px) & (angle < settings.goal_angle_rad))
        assert at_goal.size, "the block was at the goal pose at some frame"
        # after reaching it the expert backs off and hovers for at least hover_steps[0] frames
        assert len(states) - at_goal[0] >= settings.hover_steps[0]
    for episode in expert_episodes:
        assert (episode["states"][:, 2:4] > 5).all() and (episode["states"][:, 2:4] < 506).all()


def test_segment_distribution_counts_goals_that_need_no_pushing():
    still = {"states": np.tile(np.array([[100.0, 100, 256, 256, 0.5]], np.float32), (40, 1)),
             "velocities": np.zeros((40, 2), np.float32), "rel_actions": np.zeros((40, 2), np.float32)}
    moving = {key: value.copy() for key, value in still.items()}
    moving["states"][:, 2] += np.arange(40, dtype=np.float32) * 2.0  # 50 px over 25 steps
    distribution = segment_distribution([still, moving], steps=25)
    assert distribution["segments"] == 30
    assert distribution["block_moves_under_5px"] == pytest.approx(0.5)
    assert distribution["start_meets_success"] == pytest.approx(0.5)  # the still segments are solved at the start
    assert distribution["block_displacement_px"]["p90"] == pytest.approx(50.0)


def test_the_expert_predicts_a_push_with_the_envs_own_physics():
    """The predicted end of a push is where the env takes the block when the same push is played."""
    rng = np.random.default_rng(5)
    expert = ScriptedExpert(rng)
    state = np.array([150.0, 300.0, 256.0, 300.0, 0.3, 0.0, 0.0])
    push = None
    while push is None:
        candidates = expert._candidate_pushes(state)
        push = candidates[0][1] if candidates else None
    predicted = expert.predict_push(state, push)
    env = pusht_env.PushTEnv(render_size=8, reset_mode="exact", visual_obs=False)
    start = state.copy()
    start[:2], start[5:] = push.waypoints[-1], 0.0
    _, info = env.reset(options={"init_state": start})
    state_ref = [info["state"]]
    played = []
    for action_px in expert._push(state_ref, push):
        state_ref[0] = env.step(action_px / pusht_env.ACTION_SCALE)[4]["state"]
        played.append(state_ref[0])
    np.testing.assert_allclose(predicted, np.stack(played), atol=1e-9)


def test_states_do_not_depend_on_rendering():
    with_frames = pusht_data.generate_episode(2, 7, 80, 16, "expert")
    without = pusht_data.generate_episode(2, 7, 80, None, "expert")
    assert with_frames["frames"].shape == (len(with_frames["states"]), 16, 16, 3) and "frames" not in without
    for key in ("states", "velocities", "rel_actions"):
        np.testing.assert_array_equal(with_frames[key], without[key])


def test_the_dataset_manifest_keeps_the_comparison_and_the_segments(tmp_path):
    out = tmp_path / "pusht"
    stats = generate_dataset("pusht", out, episodes=4, seed=1, steps=60, workers=1, progress=False, render_size=16, video="pth")
    manifest = json.loads((out / "wmquant_dataset.json").read_text())
    assert manifest["env_kwargs"] == {"render_size": 16, "video": "pth"}
    comparison = manifest["stats"]["official_comparison"]
    assert [c["name"] for c in comparison][:2] == ["agent x", "agent y"] and len(comparison) == 9
    assert manifest["stats"]["policy"] == "expert" == stats["policy"]
    assert manifest["stats"]["val_segments"]["steps"] == 25


def test_unknown_policy_is_refused():
    with pytest.raises(ConfigError, match="unknown PushT policy 'random'; valid policies: expert, pusher"):
        make_policy("random", np.random.default_rng(0))


def test_cli_policy_flag(tmp_path, capsys):
    code = main(["data", "--env", "pusht", "--out", str(tmp_path / "bad"), "--episodes", "2", "--policy", "random"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "unknown --policy 'random'" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "pusher"
    code = main(["data", "--env", "pusht", "--out", str(out), "--episodes", "2", "--steps", "30", "--policy", "pusher",
                 "--render-size", "16", "--video", "pth", "--workers", "1", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0 and "Against the official pusht_noise statistics" in printed and "| block x |" in printed
    assert printed.startswith(f"wrote {out}: 2 pusht episodes") and "policy pusher" in printed and "{" not in printed
    code = main(["data", "--env", "pusht", "--out", str(tmp_path / "json"), "--episodes", "2", "--steps", "5", "--render-size", "16",
                 "--video", "pth", "--workers", "1", "--quiet", "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["policy"] == "expert"
    assert json.loads((out / "wmquant_dataset.json").read_text())["stats"]["policy"] == "pusher"
