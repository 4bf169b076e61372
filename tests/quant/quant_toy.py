"""A tiny world model with wmquant's module layout, built from the shared transformer Block.

encoder.patch_embed.proj (Conv2d) -> encoder.blocks.{i} -> encoder.norm; action_encoder.patch_embed
and proprio_encoder.patch_embed (Conv1d, k=1); predictor.blocks.{i} with a frame-causal mask passed
as the blocks' `attend` argument -> predictor.norm. Small enough for CPU tests.
"""

from __future__ import annotations

import torch
from torch import nn

from wmquant.models.blocks import Block
from wmquant.quant import QuantLinear
from wmquant.quant.calibration import layer_input_rows


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, patch)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


class ToyEncoder(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int, patch: int = 4) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(3, dim, patch)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_dim, layerscale_init=1.0) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class Conv1dEmbedding(nn.Module):
    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.patch_embed = nn.Conv1d(in_chans, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(x.transpose(1, 2)).transpose(1, 2)


class ToyPredictor(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int, tokens_per_frame: int,
                 frames: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_dim, dim_head=dim_head, qkv_bias=False, norm_eps=1e-5) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        frame = torch.arange(frames).repeat_interleave(tokens_per_frame)
        self.register_buffer("mask", frame[None, :] <= frame[:, None], persistent=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        attend = self.mask[: z.shape[1], : z.shape[1]]
        for block in self.blocks:
            z = block(z, attend)
        return self.norm(z)


class ToyWorldModel(nn.Module):
    def __init__(self, enc_dim: int = 32, enc_depth: int = 2, pred_depth: int = 2, action_dim: int = 4,
                 emb_dim: int = 4, img: int = 16, patch: int = 4, frames: int = 2, heads: int = 4,
                 dim_head: int = 8, mlp_ratio: int = 2) -> None:
        super().__init__()
        tokens = (img // patch) ** 2
        pred_dim = enc_dim + 2 * emb_dim
        self.encoder = ToyEncoder(enc_dim, enc_depth, heads, mlp_ratio * enc_dim, patch)
        self.action_encoder = Conv1dEmbedding(action_dim, emb_dim)
        self.proprio_encoder = Conv1dEmbedding(2, emb_dim)
        self.predictor = ToyPredictor(pred_dim, pred_depth, heads, dim_head, mlp_ratio * pred_dim, tokens, frames)
        self.img = img

    def forward(self, images: torch.Tensor, proprio: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """images (b, t, 3, H, W), proprio (b, t, 2), actions (b, t, A) -> predictor output (b, t*N, D)."""
        b, t = images.shape[:2]
        visual = self.encoder(images.flatten(0, 1)).unflatten(0, (b, t))
        tokens = visual.shape[2]
        extra = torch.cat([self.proprio_encoder(proprio), self.action_encoder(actions)], dim=-1)
        z = torch.cat([visual, extra[:, :, None].expand(-1, -1, tokens, -1)], dim=-1)
        return self.predictor(z.flatten(1, 2))


def make_model(seed: int = 0, dtype: torch.dtype = torch.float32, outliers: bool = True, **kwargs) -> ToyWorldModel:
    """A random toy model; `outliers` gives a few LayerNorm channels large gains (activation outliers)."""
    torch.manual_seed(seed)
    model = ToyWorldModel(**kwargs).to(dtype).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                if outliers:
                    module.weight[:2] *= 12.0
    return model


def make_inputs(model: ToyWorldModel, batch: int = 3, frames: int = 2, seed: int = 1) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    action_dim = model.action_encoder.patch_embed.in_channels
    images = torch.rand(batch, frames, 3, model.img, model.img, generator=gen, dtype=dtype) * 2 - 1
    proprio = torch.randn(batch, frames, 2, generator=gen, dtype=dtype)
    actions = torch.randn(batch, frames, action_dim, generator=gen, dtype=dtype)
    return images, proprio, actions


def calibration_runner(model: ToyWorldModel, calls: int = 3, batch: int = 3, seed: int = 10):
    """A stand-in for FP MPC-CEM planning: a few forward passes with 1 and 2 frames."""

    def run() -> None:
        with torch.no_grad():
            for i in range(calls):
                frames = 1 + i % 2
                model(*make_inputs(model, batch=batch, frames=frames, seed=seed + i))

    return run


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def summed_layer_output_error(model: nn.Module, reference_model: nn.Module, runner) -> float:
    """Sum over the quantized linears of ||X (W_hat - W)^T||^2 (float64), where X are the inputs
    that the float `reference_model` sees at each layer while `runner` drives it: the objective
    GPTQ minimises layer by layer, so it must not exceed RTN's on the same inputs."""
    rows: dict[str, list[torch.Tensor]] = {}
    names = [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    hooks = [reference_model.get_submodule(n).register_forward_pre_hook(
        lambda m, a, n=n: rows.setdefault(n, []).append(layer_input_rows(m, a[0]))) for n in names]
    try:
        runner()
    finally:
        for hook in hooks:
            hook.remove()
    total = 0.0
    for name in names:
        layer = model.get_submodule(name)
        diff = layer.weight_quantizer(layer.weight).detach() - reference_model.get_submodule(name).weight.detach()
        total += float((torch.cat(rows[name]).double() @ diff.double().T).pow(2).sum())
    return total
