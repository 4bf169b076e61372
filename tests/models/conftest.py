"""Reference computations for the model tests, written from the definitions, not from wmquant.

* `dinov2_reference`: DINOv2's forward (`x_norm_patchtokens`) from a torch-hub state dict, with
  explicit attention arithmetic.
* `upstream`: stand-ins for DINO-WM's `models.vit`, `models.vqvae` and `models.proprio` classes
  (upstream parameter names and forward passes, spec 3.4-3.7) and an accelerate-like optimizer
  wrapper, installable under their upstream module names so that pickles reference them exactly
  as official checkpoints do.
"""

from __future__ import annotations

import enum
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

# --- DINOv2 reference ------------------------------------------------------------------------------


def dinov2_reference(
    state: dict[str, torch.Tensor],
    images: torch.Tensor,
    *,
    heads: int,
    patch_size: int = 14,
    eps: float = 1e-6,
    num_registers: int = 0,
    offset: float = 0.1,
    antialias: bool = False,
) -> torch.Tensor:
    """DINOv2 `forward_features(images)["x_norm_patchtokens"]` computed from its state dict."""
    batch, _, height, width = images.shape
    x = F.conv2d(images, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=patch_size)
    rows, cols = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([state["cls_token"].expand(batch, -1, -1), x], dim=1)
    pos = state["pos_embed"]
    side = int(math.isqrt(pos.shape[1] - 1))
    if rows * cols == side * side and height == width:
        x = x + pos
    else:
        grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        if offset:
            grid = F.interpolate(grid, scale_factor=((rows + offset) / side, (cols + offset) / side), mode="bicubic", antialias=antialias)
        else:
            grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", antialias=antialias)
        assert grid.shape[-2:] == (rows, cols)
        x = x + torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], dim=1)
    if num_registers:
        x = torch.cat([x[:, :1], state["register_tokens"].expand(batch, -1, -1), x[:, 1:]], dim=1)
    dim = x.shape[-1]
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    for i in range(depth):
        p = {k[len(f"blocks.{i}.") :]: v for k, v in state.items() if k.startswith(f"blocks.{i}.")}
        h = F.layer_norm(x, (dim,), p["norm1.weight"], p["norm1.bias"], eps)
        qkv = (h @ p["attn.qkv.weight"].T + p["attn.qkv.bias"]).reshape(batch, -1, 3, heads, dim // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) / math.sqrt(dim // heads)).softmax(-1)
        out = (attn @ v).transpose(1, 2).reshape(batch, -1, dim)
        x = x + p["ls1.gamma"] * (out @ p["attn.proj.weight"].T + p["attn.proj.bias"])
        h = F.layer_norm(x, (dim,), p["norm2.weight"], p["norm2.bias"], eps)
        h = F.gelu(h @ p["mlp.fc1.weight"].T + p["mlp.fc1.bias"]) @ p["mlp.fc2.weight"].T + p["mlp.fc2.bias"]
        x = x + p["ls2.gamma"] * h
    x = F.layer_norm(x, (dim,), state["norm.weight"], state["norm.bias"], eps)
    return x[:, 1 + num_registers :]


def random_dinov2_state(dim: int, depth: int, heads: int, grid: int = 37, num_registers: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict in DINOv2's torch-hub layout (ViT/14, LayerScale, qkv bias)."""
    del heads  # the layout does not depend on it
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    state = {
        "cls_token": rnd(1, 1, dim, scale=0.5),
        "pos_embed": rnd(1, 1 + grid * grid, dim, scale=0.5),
        "mask_token": rnd(1, dim),
        "patch_embed.proj.weight": rnd(dim, 3, 14, 14),
        "patch_embed.proj.bias": rnd(dim),
    }
    if num_registers:
        state["register_tokens"] = rnd(1, num_registers, dim, scale=0.5)
    for i in range(depth):
        state.update(
            {
                f"blocks.{i}.norm1.weight": 1 + rnd(dim),
                f"blocks.{i}.norm1.bias": rnd(dim),
                f"blocks.{i}.attn.qkv.weight": rnd(3 * dim, dim, scale=0.2),
                f"blocks.{i}.attn.qkv.bias": rnd(3 * dim),
                f"blocks.{i}.attn.proj.weight": rnd(dim, dim, scale=0.2),
                f"blocks.{i}.attn.proj.bias": rnd(dim),
                f"blocks.{i}.ls1.gamma": 0.5 + rnd(dim),
                f"blocks.{i}.norm2.weight": 1 + rnd(dim),
                f"blocks.{i}.norm2.bias": rnd(dim),
                f"blocks.{i}.mlp.fc1.weight": rnd(4 * dim, dim, scale=0.2),
                f"blocks.{i}.mlp.fc1.bias": rnd(4 * dim),
                f"blocks.{i}.mlp.fc2.weight": rnd(dim, 4 * dim, scale=0.2),
                f"blocks.{i}.mlp.fc2.bias": rnd(dim),
                f"blocks.{i}.ls2.gamma": 0.5 + rnd(dim),
            }
        )
    state["norm.weight"] = 1 + rnd(dim)
    state["norm.bias"] = rnd(dim)
    return state


def hub_to_hf_names(state: dict[str, torch.Tensor], dim: int) -> dict[str, torch.Tensor]:
    """The Hugging Face `Dinov2Model` names of a hub state dict (qkv split into query/key/value)."""
    top = {
        "cls_token": "embeddings.cls_token",
        "mask_token": "embeddings.mask_token",
        "pos_embed": "embeddings.position_embeddings",
        "register_tokens": "embeddings.register_tokens",
        "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        "norm.weight": "layernorm.weight",
        "norm.bias": "layernorm.bias",
    }
    layer = {
        "norm1": "norm1",
        "norm2": "norm2",
        "attn.proj": "attention.output.dense",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    out = {}
    for name, tensor in state.items():
        if name in top:
            out[top[name]] = tensor.clone()
            continue
        _, i, rest = name.split(".", 2)
        prefix = f"encoder.layer.{i}"
        if rest.startswith("attn.qkv."):
            leaf = rest.rsplit(".", 1)[1]
            for part, chunk in zip(("query", "key", "value"), tensor.split(dim, dim=0)):
                out[f"{prefix}.attention.attention.{part}.{leaf}"] = chunk.clone()
        elif rest in ("ls1.gamma", "ls2.gamma"):
            out[f"{prefix}.layer_scale{rest[2]}.lambda1"] = tensor.clone()
        else:
            module, leaf = rest.rsplit(".", 1)
            out[f"{prefix}.{layer[module]}.{leaf}"] = tensor.clone()
    return out


# --- DINO-WM stand-ins (upstream names and forward passes) ---------------------------------------


def _generate_mask_matrix(npatch: int, nwindow: int) -> torch.Tensor:
    rows = []
    for i in range(nwindow):
        ones = [torch.ones(npatch, npatch)] * (i + 1)
        zeros = [torch.zeros(npatch, npatch)] * (nwindow - i - 1)
        rows.append(torch.cat(ones + zeros, dim=1))
    return torch.cat(rows, dim=0)[None, None]


class FeedForward(nn.Module):
    def __init__(self, dim, hidden_dim, dropout=0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, dim), nn.Dropout(dropout)
        )

    def forward(self, x):
        return self.net(x)


class Attention(nn.Module):
    def __init__(self, dim, heads, dim_head, dropout, num_patches, num_frames):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.scale = dim_head**-0.5
        self.norm = nn.LayerNorm(dim)
        self.attend = nn.Softmax(dim=-1)
        self.dropout = nn.Dropout(dropout)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
        self.bias = _generate_mask_matrix(num_patches, num_frames)  # a plain attribute, as upstream

    def forward(self, x):
        b, n, _ = x.shape
        x = self.norm(x)
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        dots = (q @ k.transpose(-1, -2)) * self.scale
        dots = dots.masked_fill(self.bias[:, :, :n, :n] == 0, float("-inf"))
        attn = self.dropout(self.attend(dots))
        out = (attn @ v).transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out)


class Transformer(nn.Module):
    def __init__(self, dim, depth, heads, dim_head, mlp_dim, dropout, num_patches, num_frames):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([Attention(dim, heads, dim_head, dropout, num_patches, num_frames), FeedForward(dim, mlp_dim, dropout)])
            for _ in range(depth)
        )

    def forward(self, x):
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return self.norm(x)


class ViTPredictor(nn.Module):
    def __init__(self, *, num_patches, num_frames, dim, depth, heads, mlp_dim, pool="cls", dim_head=64, dropout=0.0, emb_dropout=0.0):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.randn(1, num_frames * num_patches, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, dropout, num_patches, num_frames)
        self.pool = pool

    def forward(self, x):
        n = x.shape[1]
        return self.transformer(self.dropout(x + self.pos_embedding[:, :n]))


class Quantize(nn.Module):
    def __init__(self, dim, n_embed, decay=0.99, eps=1e-5):
        super().__init__()
        self.dim, self.n_embed, self.decay, self.eps = dim, n_embed, decay, eps
        embed = torch.randn(dim, n_embed)
        self.register_buffer("embed", embed)
        self.register_buffer("cluster_size", torch.zeros(n_embed))
        self.register_buffer("embed_avg", embed.clone())


class ResBlock(nn.Module):
    def __init__(self, in_channel, channel):
        super().__init__()
        self.conv = nn.Sequential(nn.ReLU(), nn.Conv2d(in_channel, channel, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(channel, in_channel, 1))

    def forward(self, x):
        out = self.conv(x)
        out += x
        return out


class Decoder(nn.Module):
    def __init__(self, in_channel, out_channel, channel, n_res_block, n_res_channel, stride):
        super().__init__()
        blocks = [nn.Conv2d(in_channel, channel, 3, padding=1)]
        blocks += [ResBlock(channel, n_res_channel) for _ in range(n_res_block)]
        blocks.append(nn.ReLU(inplace=True))
        if stride == 4:
            blocks += [
                nn.ConvTranspose2d(channel, channel // 2, 4, stride=2, padding=1),
                nn.ReLU(inplace=True),
                nn.ConvTranspose2d(channel // 2, out_channel, 4, stride=2, padding=1),
            ]
        elif stride == 2:
            blocks.append(nn.ConvTranspose2d(channel, out_channel, 4, stride=2, padding=1))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
        return self.blocks(x)


class VQVAE(nn.Module):
    def __init__(self, in_channel=3, channel=128, n_res_block=2, n_res_channel=32, emb_dim=64, n_embed=512, decay=0.99, quantize=True):
        super().__init__()
        self.quantize = quantize
        self.quantize_b = Quantize(emb_dim, n_embed)
        self.upsample_b = Decoder(emb_dim, emb_dim, channel, n_res_block, n_res_channel, stride=4)
        self.dec = Decoder(emb_dim, in_channel, channel, n_res_block, n_res_channel, stride=4)

    def forward(self, x):
        side = int(math.isqrt(x.shape[2]))
        grid = x.reshape(x.shape[0] * x.shape[1], side, side, -1).permute(0, 3, 1, 2)
        return self.dec(self.upsample_b(grid)), torch.zeros(1)


class ProprioceptiveEmbedding(nn.Module):
    def __init__(self, num_frames=16, tubelet_size=1, in_chans=8, emb_dim=384, use_3d_pos=False):
        super().__init__()
        self.num_frames, self.tubelet_size, self.in_chans, self.emb_dim = num_frames, tubelet_size, in_chans, emb_dim
        self.patch_embed = nn.Conv1d(in_chans, emb_dim, kernel_size=tubelet_size, stride=tubelet_size)

    def forward(self, x):
        return self.patch_embed(x.permute(0, 2, 1)).permute(0, 2, 1)


class DistributedType(str, enum.Enum):
    NO = "NO"


class AcceleratorState:
    """Like accelerate's: a shared-state object whose __dict__ is pickled."""

    def __init__(self):
        self.distributed_type = DistributedType.NO
        self.device = torch.device("cpu")
        self.num_processes = 1
        self._mixed_precision = "no"


class GradientState:
    def __init__(self):
        self.sync_gradients = True
        self.active_dataloader = None
        self.dataloader_references = [None]
        self.plugin_kwargs = {}


class AcceleratedOptimizer(torch.optim.Optimizer):
    """Like accelerate's wrapper: holds the torch optimizer and the state objects; pickles __dict__."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.scaler = None
        self.accelerator_state = AcceleratorState()
        self.gradient_state = GradientState()
        self.device_placement = True
        self._is_overflow = False

    def __getstate__(self):
        return self.__dict__.copy()

    def __setstate__(self, state):
        self.__dict__.update(state)


_UPSTREAM_MODULES = {
    "models.vit": (ViTPredictor, Transformer, Attention, FeedForward),
    "models.vqvae": (VQVAE, Quantize, Decoder, ResBlock),
    "models.proprio": (ProprioceptiveEmbedding,),
    "accelerate.optimizer": (AcceleratedOptimizer,),
    "accelerate.state": (AcceleratorState, GradientState),
    "accelerate.utils.dataclasses": (DistributedType,),
}


class Upstream:
    """The stand-in classes plus `install()` / `uninstall()` under their upstream module names."""

    ViTPredictor = ViTPredictor
    VQVAE = VQVAE
    ProprioceptiveEmbedding = ProprioceptiveEmbedding
    AcceleratedOptimizer = AcceleratedOptimizer
    generate_mask_matrix = staticmethod(_generate_mask_matrix)

    def __init__(self) -> None:
        self._saved: dict[str, types.ModuleType | None] = {}

    def install(self) -> None:
        packages = {"models", "accelerate", "accelerate.utils"}
        for name in sorted(packages | set(_UPSTREAM_MODULES)):
            self._saved[name] = sys.modules.get(name)
            module = types.ModuleType(name)
            for cls in _UPSTREAM_MODULES.get(name, ()):
                cls.__module__ = name
                setattr(module, cls.__name__, cls)
            sys.modules[name] = module

    def uninstall(self) -> None:
        for name, previous in self._saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
        self._saved.clear()


@pytest.fixture
def upstream():
    stand_ins = Upstream()
    yield stand_ins
    stand_ins.uninstall()


@pytest.fixture(scope="session")
def reference():
    """The DINOv2 reference helpers, as a namespace."""
    return types.SimpleNamespace(
        dinov2=dinov2_reference, random_dinov2_state=random_dinov2_state, hub_to_hf_names=hub_to_hf_names
    )


# --- tiny wmquant models -------------------------------------------------------------------------


def tiny_model_config(**overrides) -> dict:
    """A world model small enough for unit tests: 32 px images, 4 x 4 patches, token width 16+8+15."""
    cfg = {
        "img_size": 32,
        "num_hist": 3,
        "frameskip": 2,
        "proprio_dim": 3,
        "action_dim": 2,
        "proprio_emb_dim": 4,
        "action_emb_dim": 5,
        "num_proprio_repeat": 2,
        "num_action_repeat": 3,
        "encoder": {"backend": "vit", "patch_size": 8, "dim": 16, "depth": 1, "heads": 2},
        "predictor": {"depth": 2, "heads": 2, "dim_head": 8, "mlp_dim": 32, "dropout": 0.1},
        "decoder": {"channel": 8, "n_res_block": 1, "n_res_channel": 4, "n_embed": 8, "upsample_stride": 2, "decode_stride": 4},
    }
    cfg.update(overrides)
    return cfg


def random_batch(b: int, t: int, cfg: dict, seed: int = 0) -> tuple[dict, torch.Tensor]:
    """(obs, act) for a model built from `cfg`: images in [-1, 1], normalised-looking vectors."""
    g = torch.Generator().manual_seed(seed)
    size = cfg["img_size"]
    obs = {
        "visual": torch.rand(b, t, 3, size, size, generator=g) * 2 - 1,
        "proprio": torch.randn(b, t, cfg["proprio_dim"], generator=g),
    }
    return obs, torch.randn(b, t, cfg["action_dim"] * cfg["frameskip"], generator=g)


@pytest.fixture
def tiny():
    """Builders for tiny model configs and batches, as a namespace."""
    return types.SimpleNamespace(config=tiny_model_config, batch=random_batch)
