"""Gradient descent on action sequences through the world model (spec 5.7), batched over episodes.

Episodes are independent: the summed loss gives each episode's actions the gradient of its own cost,
and the exploration noise comes from each episode's own generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .cem import PlanResult
from .engine import Engine

SAMPLE_TYPES = ("randn", "zero")


@dataclass(frozen=True)
class GDConfig:
    horizon: int = 5
    opt_steps: int = 1000
    lr: float = 1.0
    action_noise: float = 0.003
    sample_type: str = "randn"

    def __post_init__(self) -> None:
        for name in ("horizon", "opt_steps"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"planner.sub_planner.{name} must be a positive integer, got {value!r}")
        if self.sample_type not in SAMPLE_TYPES:
            raise ConfigError(f"unknown sample_type {self.sample_type!r}; valid: {', '.join(SAMPLE_TYPES)}")
        if not self.lr > 0:
            raise ConfigError(f"planner.sub_planner.lr must be > 0, got {self.lr!r}")


class GDPlanner:
    def __init__(self, config: GDConfig, action_dim: int, zero_action: torch.Tensor) -> None:
        """zero_action: (A,) the normalised encoding of a zero env action (for sample_type=zero)."""
        self.config = config
        self.action_dim = action_dim
        self.zero_action = zero_action

    def plan(
        self,
        engine: Engine,
        z0: dict[str, torch.Tensor],
        z_goal: dict[str, torch.Tensor],
        generators: Sequence[torch.Generator],
        init_actions: torch.Tensor | None = None,
    ) -> PlanResult:
        cfg = self.config
        episodes = len(generators)
        shape = (cfg.horizon, self.action_dim)
        if cfg.sample_type == "randn":
            init = torch.stack([torch.randn(shape, generator=g) for g in generators])
        else:
            init = self.zero_action.expand(episodes, *shape).clone()
        if init_actions is not None and init_actions.shape[1] > 0:
            init[:, : init_actions.shape[1]] = init_actions.cpu()
        noise = torch.stack([torch.randn((cfg.opt_steps, *shape), generator=g) for g in generators])
        device = engine.device
        actions = init.to(device).requires_grad_(True)
        noise = noise.to(device) * cfg.action_noise
        per_step = []
        for step in range(cfg.opt_steps):
            z = engine.rollout(z0, actions, grad=True)
            per_episode = engine.objective(z, z_goal)
            (grad,) = torch.autograd.grad(per_episode.sum(), actions)
            with torch.no_grad():
                actions -= cfg.lr * grad
                actions += noise[:, step]
            per_step.append(per_episode.detach().cpu())
        return PlanResult(actions=actions.detach().cpu(), best_cost=per_step[-1], step_costs=torch.stack(per_step, dim=1))
