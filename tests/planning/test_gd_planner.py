"""The gradient planner (spec 5.7): its initial actions, its exact update, its per-episode costs, and
MPC with it on the analytic dot model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wmquant.envs import make_batch
from wmquant.errors import ConfigError
from wmquant.planning.cem import noise_generator
from wmquant.planning.engine import Engine
from wmquant.planning.episodes import evaluation_seeds, make_episodes
from wmquant.planning.gd import GDConfig, GDPlanner
from wmquant.planning.mpc import MPCConfig, run_mpc
from wmquant.planning.objective import Objective

from toy_model import DotPositionModel, wall_normalization


class QuadraticRollout:
    """rollout returns the actions as the latent; objective = sum of squares to the goal's actions."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.seen = []

    def rollout(self, z0, actions, grad=False):
        self.seen.append(actions.detach().clone())
        return actions

    def objective(self, z, z_goal):
        return (z - z_goal).pow(2).sum(dim=(1, 2))


def _generators(*episodes):
    return [noise_generator(0, e, 0) for e in episodes]


def test_gd_takes_the_manual_update_with_each_episodes_own_noise():
    config = GDConfig(horizon=3, opt_steps=4, lr=0.1, action_noise=0.05)
    goal = torch.tensor([[[1.0, -2.0]] * 3, [[0.5, 0.25]] * 3])
    engine = QuadraticRollout()
    result = GDPlanner(config, action_dim=2, zero_action=torch.zeros(2)).plan(engine, None, goal, _generators(1, 2))
    for episode, gen in enumerate(_generators(1, 2)):  # the reference, episode by episode, from the definition
        actions = torch.randn((3, 2), generator=gen)
        noise = torch.randn((4, 3, 2), generator=gen) * 0.05
        costs = []
        for step in range(4):
            torch.testing.assert_close(engine.seen[step][episode], actions, rtol=0, atol=1e-6)
            costs.append(float((actions - goal[episode]).pow(2).sum()))
            actions = actions - 0.1 * 2 * (actions - goal[episode]) + noise[step]
        torch.testing.assert_close(result.actions[episode], actions, rtol=0, atol=1e-6)
        assert result.step_costs[episode].tolist() == pytest.approx(costs, rel=1e-6)
        assert float(result.best_cost[episode]) == pytest.approx(costs[-1], rel=1e-6)


def test_gd_starts_from_carried_actions_then_random_or_zero_actions():
    carried = torch.tensor([[[0.3, 0.3]]])
    zero_action = torch.tensor([-0.7, 0.2])  # a zero env action, normalised, is not 0
    engine = QuadraticRollout()
    config = GDConfig(horizon=3, opt_steps=1, sample_type="zero")
    GDPlanner(config, 2, zero_action).plan(engine, None, torch.zeros(1, 3, 2), _generators(5), init_actions=carried)
    assert torch.equal(engine.seen[0][0], torch.tensor([[0.3, 0.3], [-0.7, 0.2], [-0.7, 0.2]]))
    engine = QuadraticRollout()
    config = GDConfig(horizon=3, opt_steps=1, sample_type="randn")
    GDPlanner(config, 2, zero_action).plan(engine, None, torch.zeros(1, 3, 2), _generators(5), init_actions=carried)
    expected = torch.randn((3, 2), generator=_generators(5)[0])
    expected[0] = carried[0, 0]
    assert torch.equal(engine.seen[0][0], expected)


def test_gd_converges_on_each_episodes_own_goal():
    goal = torch.tensor([[[1.0, -2.0]] * 4, [[-0.5, 0.75]] * 4])
    result = GDPlanner(GDConfig(horizon=4, opt_steps=60, lr=0.2, action_noise=0.0), 2, torch.zeros(2)).plan(
        QuadraticRollout(), None, goal, _generators(1, 2))
    torch.testing.assert_close(result.actions, goal, rtol=0, atol=1e-4)
    assert (result.step_costs[:, -1] < 1e-6).all() and (result.step_costs[:, 0] > 1.0).all()


@pytest.mark.parametrize("kwargs", [dict(horizon=0), dict(opt_steps=0), dict(lr=0.0), dict(lr=-1.0),
                                    dict(sample_type="uniform"), dict(horizon=2.5)])
def test_gd_config_rejects_bad_values(kwargs):
    with pytest.raises(ConfigError):
        GDConfig(**kwargs)


def test_gd_config_accepts_its_boundaries():
    config = GDConfig(horizon=1, opt_steps=1, lr=1e-9, sample_type="zero")
    assert (config.horizon, config.opt_steps) == (1, 1)


def test_mpc_with_gd_reaches_goals_on_the_dot_model():
    env = make_batch("wall", 6)
    episodes = make_episodes(env, "wall", evaluation_seeds(99, 6), "random_state", goal_H=5, frameskip=5)
    norm = wall_normalization()
    engine = Engine(DotPositionModel(norm), norm, img_size=65, objective=Objective())
    zero = norm.normalize_actions(torch.zeros(2)).repeat(5)
    planner = GDPlanner(GDConfig(horizon=5, opt_steps=30, lr=0.02, action_noise=0.003), 10, zero)
    trace = run_mpc(engine, planner, env, episodes, MPCConfig(n_taken_actions=5, max_iter=4), frameskip=5, seed=99,
                    progress=False)
    rows = np.array(trace.success_by_iter)
    assert rows.shape == (4, 6) and (np.diff(rows, axis=0) >= 0).all()
    assert rows[-1].sum() >= 2
    for entry in trace.logs:  # the loss falls within every MPC iteration's 30 gradient steps
        losses = entry["mpc/planning_loss_by_opt_step"]
        assert len(losses) == 30 and losses[-1] < losses[0] / 100
