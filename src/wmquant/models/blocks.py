"""The pre-norm transformer block shared by every ViT in wmquant (encoders and the predictor).

One block class serves the DINOv2 encoder, wmquant's own small encoders and the DINO-WM predictor,
so that every quantization recipe sees the same module names everywhere:

    blocks.{i}.norm1 -> blocks.{i}.attn.qkv -> (attention) -> blocks.{i}.attn.proj -> ls1
    blocks.{i}.norm2 -> blocks.{i}.mlp.fc1 -> GELU -> blocks.{i}.mlp.fc2            -> ls2

These are DINOv2's own parameter names, so torch-hub DINOv2 checkpoints load without renaming.
The DINO-WM predictor (`transformer.layers.{i}.0/1...` upstream) maps onto the same layout.

`attn.q_tap`, `attn.k_tap`, `attn.v_tap` and `attn.probs_tap` are identity modules on the inputs of
the two attention matmuls. They do nothing by themselves; a quantization recipe that targets the
attention matmuls replaces them with activation quantizers, by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention. q, k, v are the three consecutive thirds of `qkv`'s output, each
    split head-major into `num_heads` heads of `dim_head` features (DINOv2 and DINO-WM layout)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        dim_head: int | None = None,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        dim_head = dim_head if dim_head is not None else dim // num_heads
        self.num_heads = num_heads
        self.dim_head = dim_head
        inner = num_heads * dim_head
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim, bias=proj_bias)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)
        self.q_tap = nn.Identity()
        self.k_tap = nn.Identity()
        self.v_tap = nn.Identity()
        self.probs_tap = nn.Identity()

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, dim). attend: optional bool (N, N), True where query i may attend to key j."""
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.num_heads, self.dim_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, dim_head)
        q, k, v = self.q_tap(q), self.k_tap(k), self.v_tap(v)
        dropout = self.attn_drop if self.training else 0.0
        if isinstance(self.probs_tap, nn.Identity):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend, dropout_p=dropout)
        else:
            # Explicit path: the softmax probabilities must exist as a tensor to be quantized.
            scores = (q @ k.transpose(-2, -1)) * self.dim_head**-0.5
            if attend is not None:
                scores = scores.masked_fill(~attend, float("-inf"))
            probs = self.probs_tap(scores.softmax(dim=-1))
            probs = F.dropout(probs, p=dropout, training=self.training)
            out = probs @ v
        out = out.transpose(1, 2).reshape(batch, tokens, self.num_heads * self.dim_head)
        return self.proj_drop(self.proj(out))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class LayerScale(nn.Module):
    """Per-channel residual scale (DINOv2). Parameter name `gamma` matches DINOv2 checkpoints."""

    def __init__(self, dim: int, init_value: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """x = x + ls1(attn(norm1(x))); x = x + ls2(mlp(norm2(x)))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        dim_head: int | None = None,
        qkv_bias: bool = True,
        layerscale_init: float | None = None,
        dropout: float = 0.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, dim_head, qkv_bias=qkv_bias, attn_drop=dropout, proj_drop=dropout)
        self.ls1 = LayerScale(dim, layerscale_init) if layerscale_init is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_dim, drop=dropout)
        self.ls2 = LayerScale(dim, layerscale_init) if layerscale_init is not None else nn.Identity()

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), attend))
        x = x + self.ls2(self.mlp(self.norm2(x)))
        return x
