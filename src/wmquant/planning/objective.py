"""The planning objective: distance between predicted latents and the goal's latent (spec 5.5)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError

OBJECTIVE_MODES = ("last", "all")


@dataclass(frozen=True)
class Objective:
    mode: str = "last"
    alpha: float = 1.0
    base: float = 2.0

    def __post_init__(self) -> None:
        if self.mode not in OBJECTIVE_MODES:
            raise ConfigError(f"unknown objective mode {self.mode!r}; valid: {', '.join(OBJECTIVE_MODES)}")

    def terms(
        self, z_pred: dict[str, torch.Tensor], z_goal: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Visual and proprio MSE terms, each (b,).

        z_pred: visual (b, T, N, E), proprio (b, T, Dp) — the rollout, frame 0 = current observation.
        z_goal: visual (b, 1, N, E), proprio (b, 1, Dp).
        """
        if self.mode == "last":
            visual = (z_pred["visual"][:, -1] - z_goal["visual"][:, 0]).pow(2).mean(dim=(1, 2))
            proprio = (z_pred["proprio"][:, -1] - z_goal["proprio"][:, 0]).pow(2).mean(dim=1)
            return visual, proprio
        frames = z_pred["visual"].shape[1]
        weights = self.base ** torch.arange(frames, dtype=z_pred["visual"].dtype, device=z_pred["visual"].device)
        weights = weights / weights.sum()
        visual_k = (z_pred["visual"] - z_goal["visual"]).pow(2).mean(dim=(2, 3))  # (b, T)
        proprio_k = (z_pred["proprio"] - z_goal["proprio"]).pow(2).mean(dim=2)
        # Upstream divides the weighted sum by T once more; kept so that costs match its scale.
        return (visual_k * weights).sum(1) / frames, (proprio_k * weights).sum(1) / frames

    def __call__(self, z_pred: dict[str, torch.Tensor], z_goal: dict[str, torch.Tensor]) -> torch.Tensor:
        visual, proprio = self.terms(z_pred, z_goal)
        return visual + self.alpha * proprio
