"""The planning engine: how a planner runs the world model (device, precision, batching).

Planners ask three things of a world model: encode observations, roll out action sequences from
encoded observations, and score the rollouts against goals. The engine does these in batches of
whole episodes (`chunk_episodes` episodes x all their samples per predictor call), encodes each
observation once per planning step, and runs in fp32 unless a faster precision is asked for.
It does not know whether the model is quantized.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from ..data.base import Normalization
from ..data.transforms import to_model_input
from ..errors import ConfigError
from .objective import Objective

PRECISIONS = ("fp32", "tf32", "bf16")


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"engine.device={name} but CUDA is not available; use engine.device=cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N") from err


@dataclass
class Engine:
    model: torch.nn.Module
    normalization: Normalization
    img_size: int
    objective: Objective
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"
    chunk_episodes: int | str = "auto"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown engine.precision {self.precision!r}; valid: {', '.join(PRECISIONS)}")
        if self.chunk_episodes != "auto" and (not isinstance(self.chunk_episodes, int) or self.chunk_episodes < 1):
            raise ConfigError(f"engine.chunk_episodes must be 'auto' or a positive integer, got {self.chunk_episodes!r}")
        self.model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    # -- precision --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def numerics(self) -> Iterator[None]:
        """fp32 is exact (TF32 off); tf32 lets matmuls use TF32; bf16 autocasts the model."""
        old_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.precision == "tf32"
        torch.backends.cudnn.allow_tf32 = self.precision == "tf32"
        try:
            if self.precision == "bf16":
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=True):
                    yield
            else:
                yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old_tf32

    # -- observations -----------------------------------------------------------------------------
    def preprocess(self, obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """obs: visual uint8 (b, H, W, 3) or (b, t, H, W, 3); proprio (b, P) or (b, t, P).
        Returns model input with a time axis: visual (b, t, 3, S, S) in [-1, 1], proprio normalised."""
        visual = torch.as_tensor(np.asarray(obs["visual"]))
        proprio = torch.as_tensor(np.asarray(obs["proprio"]), dtype=torch.float32)
        if visual.ndim == 4:
            visual = visual[:, None]
        if proprio.ndim == 2:
            proprio = proprio[:, None]
        visual = visual.to(self.device).permute(0, 1, 4, 2, 3)  # (b, t, 3, H, W)
        return {
            "visual": to_model_input(visual, self.img_size),
            "proprio": self.normalization.normalize_proprio(proprio.to(self.device)),
        }

    @torch.no_grad()
    def encode(self, obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Latents of observations: visual (b, t, N, E), proprio (b, t, Dp), in fp32."""
        with self.numerics():
            z = self.model.encode_obs(self.preprocess(obs))
        return {k: v.float() for k, v in z.items()}

    # -- rollouts ---------------------------------------------------------------------------------
    def _chunk(self, num_episodes: int, samples: int) -> int:
        if self.chunk_episodes != "auto":
            return int(self.chunk_episodes)
        if self.device.type == "cuda":
            budget = 65536  # sequences per predictor call that keep an H100 busy without OOM at DINO-WM scale
        else:
            budget = 1200  # CPU: larger batches only add memory traffic
        return max(1, min(num_episodes, budget // max(samples, 1)))

    def rollout(self, z0: dict[str, torch.Tensor], actions: torch.Tensor, grad: bool = False) -> dict[str, torch.Tensor]:
        """z0: latents (b, n, ...) ; actions (b, H, A) normalised -> predicted latents (b, H+1, ...)."""
        ctx = contextlib.nullcontext() if grad else torch.no_grad()
        with ctx, self.numerics():
            z = self.model.rollout_latent(z0, actions.to(self.device))
        return {k: v.float() for k, v in z.items()}

    @torch.no_grad()
    def sample_costs(
        self, z0: dict[str, torch.Tensor], z_goal: dict[str, torch.Tensor], actions: torch.Tensor
    ) -> torch.Tensor:
        """Cost of every sample. z0/z_goal: (E, n, ...) and (E, 1, ...); actions (E, S, H, A) -> (E, S)."""
        episodes, samples = actions.shape[:2]
        chunk = self._chunk(episodes, samples)
        costs = []
        for start in range(0, episodes, chunk):
            sl = slice(start, start + chunk)
            c = actions[sl].shape[0]
            z0_c = {k: v[sl].repeat_interleave(samples, dim=0) for k, v in z0.items()}
            goal_c = {k: v[sl].repeat_interleave(samples, dim=0) for k, v in z_goal.items()}
            z = self.rollout(z0_c, actions[sl].reshape(c * samples, *actions.shape[2:]))
            costs.append(self.objective(z, goal_c).view(c, samples))
        return torch.cat(costs)
