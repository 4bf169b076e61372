"""The comparison of PushT data with the official constants and the 25-step segment distribution,
against values computed by hand from their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wmquant.data.pusht_stats import (ACTION_NAMES, STATE_NAMES, DimensionCheck, compare_with_official,
                                      official_statistics, segment_distribution, segment_table, statistics_table)


def episode(states, velocities=None, rel_actions=None) -> dict[str, np.ndarray]:
    states = np.asarray(states, np.float32)
    length = len(states)
    return {"states": states,
            "velocities": np.zeros((length, 2), np.float32) if velocities is None else np.asarray(velocities, np.float32),
            "rel_actions": np.zeros((length, 2), np.float32) if rel_actions is None else np.asarray(rel_actions, np.float32)}


def test_official_actions_are_in_pixels():
    # the table: the official relative actions have std 20.2 and 20.0 px, means -0.9 and 0.7 px
    state_mean, state_std, action_mean, action_std = official_statistics()
    assert state_mean.shape == state_std.shape == (7,) and action_mean.shape == action_std.shape == (2,)
    np.testing.assert_allclose(action_std, [20.19, 20.02], atol=1e-4)
    np.testing.assert_allclose(action_mean, [-0.87, 0.68], atol=1e-4)
    np.testing.assert_allclose(state_std[2:4], [52.7054, 57.4971], atol=1e-3)


@pytest.mark.parametrize("mean, std, check_mean, ok", [
    (12.0, 8.0, True, True),     # offset +0.25 std, the bound itself
    (8.0, 8.0, True, True),      # offset -0.25 std
    (12.25, 8.0, True, False),   # offset +0.28 std
    (7.75, 8.0, True, False),
    (40.0, 8.0, False, True),    # the offset is not checked (actions)
    (10.0, 9.12, True, True),    # std ratio 1.14
    (10.0, 9.28, True, False),   # 1.16
    (10.0, 6.88, True, True),    # 0.86
    (10.0, 6.72, True, False),   # 0.84
    (10.0, 9.28, False, False),  # the std is checked for actions too
])
def test_a_dimension_is_within_bounds_by_its_mean_offset_and_its_std_ratio(mean, std, check_mean, ok):
    check = DimensionCheck("x", 10.0, mean, 8.0, std, check_mean)
    assert check.mean_offset_std == pytest.approx((mean - 10.0) / 8.0)
    assert check.std_ratio == pytest.approx(std / 8.0)
    assert check.ok is ok
    entry = check.as_dict()
    assert entry["ok"] is ok and entry["mean_checked"] is check_mean
    assert entry["mean_offset_std"] == check.mean_offset_std and entry["std_ratio"] == check.std_ratio
    assert DimensionCheck.from_dict(entry) == check


def test_data_at_the_official_mean_plus_and_minus_one_std_match_it_exactly():
    state_mean, state_std, action_mean, action_std = official_statistics()
    high, low = state_mean + state_std, state_mean - state_std
    # every episode's last action has no recorded outcome and must not count: make it absurd
    absurd = [1e4, -1e4]
    episodes = [
        episode([high[:5], low[:5], high[:5]], [high[5:], low[5:], high[5:]],
                [action_mean + action_std, action_mean - action_std, absurd]),
        episode([low[:5]], [low[5:]], [absurd]),
    ]
    checks = compare_with_official(episodes)
    assert [c.name for c in checks] == [*STATE_NAMES, *ACTION_NAMES]
    assert [c.check_mean for c in checks] == [True] * 7 + [False] * 2
    for check, mean, std in zip(checks, [*state_mean, *action_mean], [*state_std, *action_std]):
        assert check.official_mean == pytest.approx(mean) and check.official_std == pytest.approx(std)
        assert check.mean == pytest.approx(mean, rel=1e-5, abs=1e-4)
        assert check.std == pytest.approx(std, rel=1e-5)
        assert check.ok
    with pytest.raises(ValueError, match="no episodes"):
        compare_with_official([])


def test_a_shifted_dimension_fails_and_the_table_says_which():
    state_mean, state_std, action_mean, action_std = official_statistics()
    states = np.stack([state_mean + state_std, state_mean - state_std])
    states[:, 2] += 0.5 * state_std[2]  # block x half an official std too far right
    actions = np.stack([action_mean + 2 * action_std, action_mean - 2 * action_std, action_mean])
    checks = compare_with_official([episode(states[:, :5], states[:, 5:], actions[:2].tolist() + [[0.0, 0.0]])])
    by_name = {c.name: c for c in checks}
    assert by_name["block x"].mean_offset_std == pytest.approx(0.5, abs=1e-5) and not by_name["block x"].ok
    assert by_name["action x"].std_ratio == pytest.approx(2.0, rel=1e-5) and not by_name["action x"].ok
    assert [c.name for c in checks if not c.ok] == ["block x", "action x", "action y"]
    table = statistics_table(checks).splitlines()
    assert len(table) == 2 + 9 and table[0].startswith("| dimension |")
    block_x = next(line for line in table if line.startswith("| block x |"))
    assert "+0.50" in block_x and block_x.endswith("| **no** |")
    agent_x = next(line for line in table if line.startswith("| agent x |"))
    assert "+0.00" in agent_x and agent_x.endswith("| 1.00 | yes |")
    action_x = next(line for line in table if line.startswith("| action x |"))
    assert "not checked)" in action_x and "| 2.00 |" in action_x


def test_segments_measure_block_motion_wrapped_turns_and_agent_motion():
    steps = 3
    # block moves 6 px right and 8 px down per step (10 px), turns from 3.0 rad across pi; agent 3-4-5
    frames = 5
    states = np.zeros((frames, 5))
    states[:, 0] = 100 + 3 * np.arange(frames)
    states[:, 1] = 100 + 4 * np.arange(frames)
    states[:, 2] = 200 + 6 * np.arange(frames)
    states[:, 3] = 200 + 8 * np.arange(frames)
    states[:, 4] = 3.0 + 0.1 * np.arange(frames)
    moving = episode(states)
    too_short = episode(np.tile([100.0, 100, 256, 256, 0.0], (steps, 1)))  # steps frames: no segment
    distribution = segment_distribution([moving, too_short], steps=steps)
    assert distribution["steps"] == steps and distribution["segments"] == frames - steps
    assert distribution["block_displacement_px"]["median"] == pytest.approx(30.0, rel=1e-6)
    assert distribution["agent_displacement_px"]["p90"] == pytest.approx(15.0, rel=1e-6)
    assert distribution["block_angle_change_rad"]["median"] == pytest.approx(0.3, abs=1e-6)
    assert distribution["start_meets_success"] == 0.0 and distribution["block_moves_under_5px"] == 0.0
    wrapped = episode(np.array([[100.0, 100, 256, 256, 3.1], [100.0, 100, 256, 256, -3.1]]))
    turn = segment_distribution([wrapped], steps=1)["block_angle_change_rad"]["median"]
    assert turn == pytest.approx(2 * math.pi - 6.2, abs=1e-6)
    with pytest.raises(ValueError, match="no episode is longer than 3 frames"):
        segment_distribution([too_short], steps=steps)


def test_segment_quantiles_are_the_median_and_the_90th_percentile():
    # ten one-step segments whose block moves 1, 2, ..., 10 px
    moves = np.arange(1, 11, dtype=np.float64)
    states = np.zeros((11, 5))
    states[:, 0] = 50.0
    states[:, 2] = 100 + np.concatenate([[0.0], np.cumsum(moves)])
    states[:, 3] = 300.0
    distribution = segment_distribution([episode(states)], steps=1)
    assert distribution["block_displacement_px"] == {"median": pytest.approx(5.5), "p90": pytest.approx(9.1)}
    assert distribution["block_moves_under_5px"] == pytest.approx(0.4)  # 1-4 px: under the 5 px of a still block
    assert distribution["agent_displacement_px"] == {"median": 0.0, "p90": 0.0}
    table = segment_table(distribution)
    assert "| 1-step segments (10) | median | 90th percentile |" in table
    assert "| block displacement (px) | 5.5 | 9.1 |" in table
    # every start lies within the success test's 20 px of its end (the agent stays put)
    assert "less than 5 px: 0.400" in table and "success test: 1.000" in table
