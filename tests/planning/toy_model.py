"""An analytic 'world model' for planning tests: its latent is the dot's position read off the frame,
and its dynamics are free motion (p + 2a per env step, no walls). Planning with it behaves like the
Euclidean planning ceiling: goals on the same side are reached, goals behind the wall often are not,
so a test sees both successes and failures within a few iterations, in milliseconds."""

from __future__ import annotations

import torch
from torch import nn

from wmquant.data.base import Normalization


def wall_normalization() -> Normalization:
    return Normalization(
        action_mean=torch.tensor([0.0, 0.0]), action_std=torch.tensor([0.75, 0.75]),
        proprio_mean=torch.tensor([32.0, 32.0]), proprio_std=torch.tensor([18.0, 18.0]),
        state_mean=torch.tensor([32.0, 32.0]), state_std=torch.tensor([18.0, 18.0]),
    )


class DotPositionModel(nn.Module):
    """visual latent (b, t, 1, 2): the dot's (x, y) in 65-px units; proprio latent: normalised proprio."""

    def __init__(self, normalization: Normalization, frameskip: int = 5, img_size: int = 65) -> None:
        super().__init__()
        self.norm = normalization
        self.frameskip = frameskip
        self.num_hist = 1
        self.scale = 65.0 / img_size
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)  # so that .parameters() is not empty

    def encode_obs(self, obs):
        visual = obs["visual"]  # (b, t, 3, H, W) in [-1, 1]
        redness = (visual[:, :, 0] - visual[:, :, 1]).clamp(min=0) ** 4  # dot pixels: R high, G low
        h, w = redness.shape[-2:]
        ys = torch.arange(h, dtype=visual.dtype)[:, None]
        xs = torch.arange(w, dtype=visual.dtype)[None, :]
        mass = redness.sum(dim=(-2, -1)).clamp(min=1e-6)
        x = (redness * xs).sum(dim=(-2, -1)) / mass * self.scale
        y = (redness * ys).sum(dim=(-2, -1)) / mass * self.scale
        return {"visual": torch.stack([x, y], -1)[:, :, None, :], "proprio": obs["proprio"]}

    def rollout_latent(self, z0, act):
        b, horizon, width = act.shape
        raw = act.reshape(b, horizon, self.frameskip, width // self.frameskip) * self.norm.action_std + self.norm.action_mean
        steps = 2.0 * raw.sum(dim=2)  # displacement per model step
        pos = z0["visual"][:, -1:, 0] + torch.cumsum(steps, dim=1)  # (b, H, 2)
        visual = torch.cat([z0["visual"][:, -1:, 0], pos], dim=1)[:, :, None, :]
        proprio = (visual[:, :, 0] - self.norm.proprio_mean) / self.norm.proprio_std
        return {"visual": visual, "proprio": proprio}
