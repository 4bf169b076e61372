"""Proprio and action embeddings: a per-frame affine map written as DINO-WM's Conv1d(kernel 1)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError


class ProprioEmbedding(nn.Module):
    """(b, t, in_chans) -> (b, t, emb_dim), the same affine map applied to every frame.

    Used for both proprio (in_chans = proprio width) and actions (in_chans = action width x
    frameskip). The Conv1d is named `patch_embed` like upstream's `ProprioceptiveEmbedding`, whose
    weights (`patch_embed.weight` (emb_dim, in_chans, 1), `patch_embed.bias`) load unchanged.
    """

    def __init__(self, in_chans: int, emb_dim: int = 10) -> None:
        super().__init__()
        if in_chans < 1 or emb_dim < 1:
            raise ConfigError(f"embedding needs in_chans >= 1 and emb_dim >= 1, got in_chans={in_chans}, emb_dim={emb_dim}")
        self.in_chans = in_chans
        self.emb_dim = emb_dim
        self.patch_embed = nn.Conv1d(in_chans, emb_dim, kernel_size=1, stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_chans:
            raise ConfigError(f"embedding input has width {x.shape[-1]}, expected in_chans={self.in_chans}")
        return self.patch_embed(x.transpose(1, 2)).transpose(1, 2)
