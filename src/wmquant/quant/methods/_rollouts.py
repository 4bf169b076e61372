"""What the planning-aware methods (rollout, mixed) score: recorded planning rollouts replayed
through the world model, against the float model's rollouts of the same action sequences."""

from __future__ import annotations

import torch
from torch import nn

Rollout = tuple[dict[str, torch.Tensor], torch.Tensor]  # (z_obs_0, actions) of one recorded group


def replay_groups(model: nn.Module, rollouts: list[Rollout]) -> tuple[list[Rollout], list[dict[str, torch.Tensor]]]:
    """The recorded groups on the model's device and dtype, and the model's rollouts of them now
    (the float reference, when called before quantization)."""
    param = next(model.parameters())
    groups = [({k: v.to(param) for k, v in z0.items()}, act.to(param)) for z0, act in rollouts]
    with torch.no_grad():
        references = [model.rollout_latent(z0, act) for z0, act in groups]
    return groups, references


def rollout_loss(model: nn.Module, z0: dict[str, torch.Tensor], act: torch.Tensor, reference: dict[str, torch.Tensor],
                 cost_weight: float) -> torch.Tensor:
    """The horizon-wide latent error plus the cost error of one recorded group (differentiable):

        sum_t ||z(t) - z_ref(t)||^2 / sum_t ||z_ref(t)||^2
      + cost_weight * mean_i (c_i - c_ref,i)^2 / mean_i c_ref,i^2,   c_i = ||z_T,i - g||^2,

    g = the reference's final latent of the group's first sequence (the CEM mean's prediction; the
    goal itself is not an input of the world model)."""
    got = model.rollout_latent(z0, act)
    err = sum((got[k] - reference[k]).pow(2).sum() for k in reference)
    norm = sum(reference[k].pow(2).sum() for k in reference)
    goal = reference["visual"][:1, -1:]
    c_ref = (reference["visual"][:, -1:] - goal).pow(2).flatten(1).sum(dim=1)
    c_got = (got["visual"][:, -1:] - goal).pow(2).flatten(1).sum(dim=1)
    cost = (c_got - c_ref).pow(2).mean() / c_ref.pow(2).mean().clamp_min(1e-30)
    return err / norm.clamp_min(1e-30) + cost_weight * cost


def mean_rollout_loss(model: nn.Module, groups: list[Rollout], references: list[dict[str, torch.Tensor]],
                      cost_weight: float) -> float:
    """`rollout_loss` averaged over the groups, without autograd."""
    with torch.no_grad():
        total = sum(float(rollout_loss(model, z0, act, ref, cost_weight)) for (z0, act), ref in zip(groups, references))
    return total / max(len(groups), 1)
