"""DINO-WM's predictor: a ViT over the tokens of `num_frames` frames with a frame-causal mask.

Tokens of frame t attend to every token of frames 0..t and to nothing later, so the output at
frame t (the prediction of frame t+1) never depends on later frames. Upstream names
(`transformer.layers.{i}.0.to_qkv` ...) map onto the shared block layout with
`upstream_predictor_key`.
"""

from __future__ import annotations

import re

import torch
from einops import repeat
from torch import nn

from ..errors import CheckpointError, ConfigError
from .blocks import Block


def frame_causal_mask(num_patches: int, num_frames: int) -> torch.Tensor:
    """Bool (F*P, F*P): entry (i, j) is True iff token j's frame <= token i's frame (may attend)."""
    frame = torch.arange(num_frames).repeat_interleave(num_patches)
    return frame[None, :] <= frame[:, None]


class ViTPredictor(nn.Module):
    """tokens (B, T*num_patches, dim) -> (B, T*num_patches, dim), T <= num_frames.

    Pre-norm blocks without qkv bias, LayerNorm eps 1e-5, a learned position embedding
    (1, num_frames*num_patches, dim) initialised N(0, 1), and a final LayerNorm (spec 3.6).

    `final_norm=False` leaves the final LayerNorm out (wmquant's option, not DINO-WM's). A final
    LayerNorm can only output tokens whose normalised features fit its gain: DINOv2's patch tokens
    leave DINOv2 through a LayerNorm and fit, but an encoder without an output norm has tokens
    of widely varying norm. On the first PushT model the largest ones, around the block, did not
    fit (docs/pusht_diagnosis/final_norm.py).
    """

    def __init__(
        self,
        num_patches: int,
        num_frames: int,
        dim: int,
        depth: int = 6,
        heads: int = 16,
        dim_head: int = 64,
        mlp_dim: int = 2048,
        dropout: float = 0.1,
        emb_dropout: float = 0.0,
        final_norm: bool = True,
    ) -> None:
        super().__init__()
        for label, value in (("num_patches", num_patches), ("num_frames", num_frames), ("dim", dim),
                             ("depth", depth), ("heads", heads), ("dim_head", dim_head), ("mlp_dim", mlp_dim)):
            if int(value) < 1:
                raise ConfigError(f"predictor {label}={value} must be a positive integer")
        self.num_patches = num_patches
        self.num_frames = num_frames
        self.dim = dim
        self.pos_embedding = nn.Parameter(torch.randn(1, num_frames * num_patches, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_dim, dim_head=dim_head, qkv_bias=False, dropout=dropout, norm_eps=1e-5)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-5) if final_norm else nn.Identity()
        # Derived from the constructor arguments, so it is not saved with the weights.
        self.register_buffer("mask", frame_causal_mask(num_patches, num_frames), persistent=False)

    def reset_derived_buffers(self) -> None:
        """Recompute the mask in place (after `to_empty`, which leaves buffers uninitialised)."""
        with torch.no_grad():
            self.mask.copy_(frame_causal_mask(self.num_patches, self.num_frames))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.shape[1]
        if tokens % self.num_patches or tokens > self.mask.shape[0]:
            raise ConfigError(
                f"predictor input has {tokens} tokens; expected T*{self.num_patches} with T <= {self.num_frames} frames"
            )
        attend = self.mask[:tokens, :tokens]
        x = self.dropout(x + self.pos_embedding[:, :tokens])
        for block in self.blocks:
            x = block(x, attend)
        return self.norm(x)


# Upstream (lucidrains-style) names inside `transformer.layers.{i}`: sub-module 0 (QuantWM: attn)
# is the attention, 1 (QuantWM: ff) the feed-forward net.
_UPSTREAM_LAYER = re.compile(r"^transformer\.layers\.(\d+)\.(0|1|attn|ff)\.(.+)$")
_UPSTREAM_ATTENTION = {"norm": "norm1", "to_qkv": "attn.qkv", "to_out.0": "attn.proj"}
_UPSTREAM_FEEDFORWARD = {"net.0": "norm2", "net.1": "mlp.fc1", "net.4": "mlp.fc2"}
_UPSTREAM_MASK = re.compile(r"^transformer\.layers\.\d+\.(0|attn)\.bias$")


def upstream_predictor_key(name: str) -> str:
    """Map an upstream DINO-WM (or QuantWM) predictor state-dict name to wmquant's name.

    `transformer.layers.3.0.to_qkv.weight` -> `blocks.3.attn.qkv.weight`,
    `transformer.layers.3.ff.net.4.bias` -> `blocks.3.mlp.fc2.bias`, `transformer.norm.weight` ->
    `norm.weight`, `pos_embedding` unchanged; a leading `module.` (DDP) is dropped.
    Raises CheckpointError for names that are not predictor parameters.
    """
    name = name.removeprefix("module.")
    if name == "pos_embedding":
        return name
    if name.startswith("transformer.norm."):
        return name.removeprefix("transformer.")
    match = _UPSTREAM_LAYER.match(name)
    if match is not None:
        layer, part, rest = match.groups()
        table = _UPSTREAM_ATTENTION if part in ("0", "attn") else _UPSTREAM_FEEDFORWARD
        module, _, leaf = rest.rpartition(".")
        if module in table:
            return f"blocks.{layer}.{table[module]}.{leaf}"
    raise CheckpointError(f"{name!r} is not a DINO-WM predictor parameter")


def upstream_predictor_state(
    state: dict[str, torch.Tensor], predictor: ViTPredictor, source: str
) -> dict[str, torch.Tensor]:
    """Rename an upstream predictor state dict to wmquant's names.

    Forks that registered the attention mask as a persistent buffer (`...layers.{i}.0.bias`) store
    it with the weights; such a mask must equal the frame-causal mask and is then dropped.
    """
    renamed = {}
    for name, tensor in state.items():
        bare = name.removeprefix("module.")
        if _UPSTREAM_MASK.match(bare):
            expected = repeat(predictor.mask, "i j -> 1 1 i j").to(tensor.device)
            if tensor.shape != expected.shape or not torch.equal(tensor != 0, expected):
                raise CheckpointError(f"{source}: stored attention mask {name!r} is not the frame-causal mask")
            continue
        try:
            renamed[upstream_predictor_key(bare)] = tensor
        except CheckpointError as exc:
            raise CheckpointError(f"{source}: {exc}") from None
    return renamed
