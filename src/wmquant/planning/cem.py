"""Cross-entropy method over action sequences (spec 5.6), batched over episodes.

Each episode draws its sampling noise from a generator of its own, seeded by (seed, episode seed, MPC
iteration), so an episode's plan does not depend on which other episodes are planned with it, on the
batch size, or on the device the noise is used on (noise is drawn on the CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .engine import Engine


def noise_generator(seed: int, episode_seed: int, mpc_iter: int) -> torch.Generator:
    """A CPU generator private to one (run seed, episode, MPC iteration)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(episode_seed) & 0xFFFFFFFF, int(mpc_iter)])
    return torch.Generator().manual_seed(int(state.generate_state(1, np.uint64)[0] >> 1))


@dataclass(frozen=True)
class CEMConfig:
    horizon: int = 5
    topk: int = 30
    num_samples: int = 300
    var_scale: float = 1.0
    opt_steps: int = 10

    def __post_init__(self) -> None:
        for name in ("horizon", "num_samples", "topk", "opt_steps"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"planner.sub_planner.{name} must be a positive integer, got {value!r}")
        if self.topk > self.num_samples:
            raise ConfigError(
                f"planner.sub_planner.topk={self.topk} exceeds num_samples={self.num_samples}; need topk <= num_samples"
            )
        if self.topk < 2:
            raise ConfigError(f"planner.sub_planner.topk must be >= 2 (the std of the elites is unbiased), got {self.topk}")
        if not self.var_scale > 0:
            raise ConfigError(f"planner.sub_planner.var_scale must be > 0, got {self.var_scale!r}")


@dataclass
class PlanResult:
    actions: torch.Tensor  # (E, H, A) normalised, on the CPU
    best_cost: torch.Tensor  # (E,) lowest sampled cost at the last optimisation step
    step_costs: torch.Tensor | None = None  # (E, opt_steps) the planner's cost at every optimisation step


class CEMPlanner:
    def __init__(self, config: CEMConfig, action_dim: int) -> None:
        self.config = config
        self.action_dim = action_dim

    def plan(
        self,
        engine: Engine,
        z0: dict[str, torch.Tensor],
        z_goal: dict[str, torch.Tensor],
        generators: Sequence[torch.Generator],
        init_actions: torch.Tensor | None = None,
    ) -> PlanResult:
        """z0 (E, n, ...), z_goal (E, 1, ...) on the engine's device; one generator per episode.
        init_actions: optional (E, h<=H, A) carried over from the previous MPC step (padded with zeros)."""
        cfg = self.config
        episodes = len(generators)
        shape = (episodes, cfg.horizon, self.action_dim)
        mu = torch.zeros(shape)
        if init_actions is not None and init_actions.shape[1] > 0:
            mu[:, : init_actions.shape[1]] = init_actions.cpu()
        sigma = torch.full(shape, float(cfg.var_scale))
        # All noise for this call, episode by episode: (E, opt_steps, S, H, A).
        noise = torch.stack(
            [torch.randn((cfg.opt_steps, cfg.num_samples, cfg.horizon, self.action_dim), generator=g) for g in generators]
        )
        device = engine.device
        mu, best, steps = self.optimize(engine, z0, z_goal, mu.to(device), sigma.to(device), noise.to(device))
        return PlanResult(actions=mu.cpu(), best_cost=best.cpu(), step_costs=steps.cpu())

    def optimize(
        self,
        engine: Engine,
        z0: dict[str, torch.Tensor],
        z_goal: dict[str, torch.Tensor],
        mu: torch.Tensor,
        sigma: torch.Tensor,
        noise: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The CEM iterations, all on the engine's device: mu, sigma (E, H, A), noise (E, steps, S, H, A)
        -> (final mu (E, H, A), lowest sampled cost at the last step (E,), lowest sampled cost at
        every step (E, steps)). Nothing here reads a device value on the host, so a GPU runs the
        whole loop from one queue of work."""
        cfg = self.config
        per_step = []
        for step in range(cfg.opt_steps):
            samples = mu[:, None] + sigma[:, None] * noise[:, step]
            samples[:, 0] = mu
            costs = engine.sample_costs(z0, z_goal, samples)  # (E, S)
            order = torch.argsort(costs, dim=1, stable=True)[:, : cfg.topk]
            elites = torch.gather(samples, 1, order[..., None, None].expand(-1, -1, cfg.horizon, self.action_dim))
            mu = elites.mean(dim=1)
            sigma = elites.std(dim=1)
            per_step.append(torch.gather(costs, 1, order[:, :1]).squeeze(1))
        return mu, per_step[-1], torch.stack(per_step, dim=1)
