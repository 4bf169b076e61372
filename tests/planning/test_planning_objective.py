"""The planning objective (spec 5.5) against its definition, written out element by element."""

from __future__ import annotations

import pytest
import torch

from wmquant.errors import ConfigError
from wmquant.planning.objective import Objective

D = torch.float64


def _latents(batch=3, frames=6, patches=4, features=5, proprio=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pred = {"visual": torch.randn(batch, frames, patches, features, generator=gen, dtype=D),
            "proprio": torch.randn(batch, frames, proprio, generator=gen, dtype=D)}
    goal = {"visual": torch.randn(batch, 1, patches, features, generator=gen, dtype=D),
            "proprio": torch.randn(batch, 1, proprio, generator=gen, dtype=D)}
    return pred, goal


def _mse(a, b):
    diffs = [(x - y) ** 2 for x, y in zip(a.flatten().tolist(), b.flatten().tolist())]
    return sum(diffs) / len(diffs)


def test_last_mode_compares_only_the_last_predicted_frame_with_the_goal():
    pred, goal = _latents()
    objective = Objective(mode="last", alpha=0.3)
    visual, proprio = objective.terms(pred, goal)
    total = objective(pred, goal)
    for b in range(3):
        expected_visual = _mse(pred["visual"][b, -1], goal["visual"][b, 0])
        expected_proprio = _mse(pred["proprio"][b, -1], goal["proprio"][b, 0])
        assert float(visual[b]) == pytest.approx(expected_visual, rel=1e-12)
        assert float(proprio[b]) == pytest.approx(expected_proprio, rel=1e-12)
        assert float(total[b]) == pytest.approx(expected_visual + 0.3 * expected_proprio, rel=1e-12)


def test_last_mode_ignores_every_earlier_frame():
    pred, goal = _latents()
    changed = {k: v.clone() for k, v in pred.items()}
    changed["visual"][:, :-1] += 10.0
    changed["proprio"][:, :-1] -= 10.0
    torch.testing.assert_close(Objective()(changed, goal), Objective()(pred, goal), rtol=0, atol=0)


@pytest.mark.parametrize("base", [2.0, 0.5, 1.0])
def test_all_mode_weights_frames_by_powers_of_base_and_divides_by_the_frame_count(base):
    pred, goal = _latents(frames=4)
    objective = Objective(mode="all", alpha=2.0, base=base)
    visual, proprio = objective.terms(pred, goal)
    weights = [base ** k for k in range(4)]
    weights = [w / sum(weights) for w in weights]
    for b in range(3):
        expected_visual = sum(w * _mse(pred["visual"][b, k], goal["visual"][b, 0]) for k, w in enumerate(weights)) / 4
        expected_proprio = sum(w * _mse(pred["proprio"][b, k], goal["proprio"][b, 0]) for k, w in enumerate(weights)) / 4
        assert float(visual[b]) == pytest.approx(expected_visual, rel=1e-12)
        assert float(proprio[b]) == pytest.approx(expected_proprio, rel=1e-12)
        assert float(objective(pred, goal)[b]) == pytest.approx(expected_visual + 2.0 * expected_proprio, rel=1e-12)


def test_the_objective_is_zero_at_the_goal_and_each_episode_is_its_own():
    pred, goal = _latents(batch=2)
    at_goal = {k: goal[k].expand_as(pred[k]).clone() for k in pred}
    assert torch.equal(Objective(mode="all")(at_goal, goal), torch.zeros(2, dtype=D))
    moved = {k: v.clone() for k, v in pred.items()}
    moved["visual"][1] += 1.0
    before, after = Objective()(pred, goal), Objective()(moved, goal)
    assert after[0] == before[0] and after[1] != before[1]


def test_an_unknown_mode_names_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown objective mode 'first'; valid: last, all"):
        Objective(mode="first")
