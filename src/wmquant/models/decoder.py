"""Patch tokens -> images: DINO-WM's VQ-VAE decoder with quantisation off (spec 3.7).

Only for looking at rollouts; planning never decodes. Module names follow upstream's `VQVAE`
(`quantize_b`, `upsample_b.blocks.*`, `dec.blocks.*`, ResBlock `conv.1` / `conv.3`), so official
decoder weights load unchanged. The codebook buffers of `quantize_b` exist only for that reason.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from ..errors import ConfigError


class Codebook(nn.Module):
    """Upstream's `Quantize` buffers (embed (dim, n_embed), cluster_size, embed_avg); never applied."""

    def __init__(self, dim: int, n_embed: int) -> None:
        super().__init__()
        embed = torch.randn(dim, n_embed)
        self.register_buffer("embed", embed)
        self.register_buffer("cluster_size", torch.zeros(n_embed))
        self.register_buffer("embed_avg", embed.clone())


class ResBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x))))."""

    def __init__(self, channel: int, hidden_channel: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channel, hidden_channel, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden_channel, channel, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


def _upsampling_steps(stride: int) -> int:
    steps = stride.bit_length() - 1
    if stride < 2 or 2**steps != stride:
        raise ConfigError(f"decoder stride {stride} must be a power of two >= 2 (DINO-WM uses 4)")
    return steps


class ConvUpsampler(nn.Module):
    """Upstream's `Decoder`: conv3x3, ResBlocks, ReLU, then stride-2 transposed convs (x`stride`).

    Each transposed conv halves the channel count; the last one outputs `out_channel`.
    """

    def __init__(self, in_channel: int, out_channel: int, channel: int, n_res_block: int, n_res_channel: int, stride: int) -> None:
        super().__init__()
        steps = _upsampling_steps(stride)
        if channel % 2 ** (steps - 1):
            raise ConfigError(f"decoder channel {channel} must be divisible by {2 ** (steps - 1)} for stride {stride}")
        layers: list[nn.Module] = [nn.Conv2d(in_channel, channel, 3, padding=1)]
        layers += [ResBlock(channel, n_res_channel) for _ in range(n_res_block)]
        layers.append(nn.ReLU())
        width = channel
        for step in range(steps):
            last = step == steps - 1
            next_width = out_channel if last else width // 2
            layers.append(nn.ConvTranspose2d(width, next_width, 4, stride=2, padding=1))
            if not last:
                layers.append(nn.ReLU())
            width = next_width
        self.blocks = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class PatchDecoder(nn.Module):
    """tokens (b, t, N, emb_dim) on a square sqrt(N) grid -> images (b, t, 3, H, W), H = W =
    sqrt(N) * upsample_stride * decode_stride. No output activation (targets are in [-1, 1]).

    DINO-WM: emb_dim 384, channel 384, n_res_block 4, n_res_channel 128, n_embed 2048, strides 4
    and 4 (14 x 14 tokens -> 224 x 224 pixels).
    """

    def __init__(
        self,
        emb_dim: int = 384,
        channel: int = 384,
        n_res_block: int = 4,
        n_res_channel: int = 128,
        n_embed: int = 2048,
        upsample_stride: int = 4,
        decode_stride: int = 4,
        out_channels: int = 3,
    ) -> None:
        super().__init__()
        self.emb_dim = emb_dim
        self.scale = upsample_stride * decode_stride
        self.quantize_b = Codebook(emb_dim, n_embed)
        self.upsample_b = ConvUpsampler(emb_dim, emb_dim, channel, n_res_block, n_res_channel, upsample_stride)
        self.dec = ConvUpsampler(emb_dim, out_channels, channel, n_res_block, n_res_channel, decode_stride)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, t, num_patches, _ = tokens.shape
        side = int(round(num_patches**0.5))
        if side * side != num_patches:
            raise ConfigError(f"decoder needs a square grid of tokens, got {num_patches}")
        grid = rearrange(tokens, "b t (h w) e -> (b t) e h w", h=side, w=side)
        images = self.dec(self.upsample_b(grid))
        return rearrange(images, "(b t) c h w -> b t c h w", b=b, t=t)
