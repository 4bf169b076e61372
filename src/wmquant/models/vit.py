"""Vision transformers that turn images into patch tokens: DINOv2 and wmquant's own small encoders.

One class, `VisionTransformer`, covers both. With a DINOv2 preset it has DINOv2's parameter names
(`cls_token, pos_embed, mask_token, register_tokens, patch_embed.proj, blocks.{i}.*, norm`), so a
torch-hub checkpoint (`dinov2_vits14_pretrain.pth`) loads without renaming, and a Hugging Face
`Dinov2Model` directory loads through an exact key mapping (`load_dinov2_weights`).

The output is DINOv2's `x_norm_patchtokens`: the final-normed patch tokens, without the cls and
register tokens, followed by an optional per-token linear `head`. Inputs are images in [-1, 1];
like DINO-WM, no ImageNet normalisation is applied.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError
from .blocks import Block
from .loading import assign_exact, first_line, summarize_keys


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: (B, C, H, W) -> (B, (H/p)*(W/p), dim), row-major."""

    def __init__(self, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """ViT encoder: images (B, 3, H, W) in [-1, 1] -> patch tokens (B, (H/p)*(W/p), emb_dim).

    `img_size` fixes the grid of the learned position embedding; other input sizes interpolate it
    exactly as DINOv2's `interpolate_pos_encoding` does (bicubic; `interpolate_offset` > 0 uses
    DINOv2's scale-factor form with that offset, 0 uses the target size; `interpolate_antialias`).
    `layerscale_init=None` builds blocks without LayerScale. `out_dim` adds a per-token linear head.
    """

    def __init__(
        self,
        *,
        img_size: int = 224,
        patch_size: int = 16,
        dim: int = 384,
        depth: int = 12,
        heads: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        layerscale_init: float | None = None,
        norm_eps: float = 1e-6,
        cls_token: bool = True,
        num_register_tokens: int = 0,
        mask_token: bool = False,
        out_dim: int | None = None,
        interpolate_offset: float = 0.1,
        interpolate_antialias: bool = False,
        in_chans: int = 3,
        name: str = "vit",
    ) -> None:
        super().__init__()
        for label, value in (("img_size", img_size), ("patch_size", patch_size), ("dim", dim), ("depth", depth), ("heads", heads)):
            if int(value) < 1:
                raise ConfigError(f"encoder {label}={value} must be a positive integer")
        if img_size % patch_size:
            raise ConfigError(f"encoder img_size={img_size} is not a multiple of patch_size={patch_size}")
        if dim % heads:
            raise ConfigError(f"encoder dim={dim} is not divisible by heads={heads}")
        self.name = name
        self.img_size = img_size
        self.patch_size = patch_size
        self.dim = dim
        self.heads = heads
        self.mlp_dim = int(dim * mlp_ratio)
        self.norm_eps = norm_eps
        self.emb_dim = out_dim if out_dim is not None else dim
        self.num_register_tokens = num_register_tokens
        self.interpolate_offset = interpolate_offset
        self.interpolate_antialias = interpolate_antialias
        grid = img_size // patch_size

        self.patch_embed = PatchEmbed(patch_size, in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cls_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + (1 if cls_token else 0), dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, dim)) if num_register_tokens else None
        self.mask_token = nn.Parameter(torch.zeros(1, dim)) if mask_token else None
        self.blocks = nn.ModuleList(
            Block(dim, heads, self.mlp_dim, qkv_bias=qkv_bias, layerscale_init=layerscale_init, norm_eps=norm_eps)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.head = nn.Linear(dim, out_dim) if out_dim is not None else None
        self._init_weights()

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens: the cls token (if any) then the registers."""
        return (1 if self.cls_token is not None else 0) + self.num_register_tokens

    def num_patches(self, img_size: int) -> int:
        """Patch tokens produced for a square input of `img_size` pixels."""
        return (img_size // self.patch_size) ** 2

    def _init_weights(self) -> None:
        # DINOv2's initialisation, so that wmquant's own encoders train like DINOv2 would.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def interpolate_pos_encoding(self, num_patch_tokens: int, height: int, width: int) -> torch.Tensor:
        """Position embedding (1, cls + patches, dim) for an input of height x width pixels."""
        num_cls = 1 if self.cls_token is not None else 0
        num_positions = self.pos_embed.shape[1] - num_cls
        # DINOv2 compares pixel sizes, not grids: a non-square input is always resampled.
        if num_patch_tokens == num_positions and height == width:
            return self.pos_embed
        dtype = self.pos_embed.dtype
        pos_embed = self.pos_embed.float()
        cls_pos, patch_pos = pos_embed[:, :num_cls], pos_embed[:, num_cls:]
        side = int(math.sqrt(num_positions))
        if side * side != num_positions:
            raise ConfigError(f"position embedding of {num_positions} patches is not a square grid")
        rows, cols = height // self.patch_size, width // self.patch_size
        if self.interpolate_offset:
            # DINOv2's historical offset: the scale factor, not only the output size, sets the
            # sampling grid, so the offset changes the interpolated values.
            resize = {
                "scale_factor": (
                    float(rows + self.interpolate_offset) / side,
                    float(cols + self.interpolate_offset) / side,
                )
            }
        else:
            resize = {"size": (rows, cols)}
        grid = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, mode="bicubic", antialias=self.interpolate_antialias, **resize)
        if tuple(grid.shape[-2:]) != (rows, cols):
            raise ConfigError(f"position-embedding interpolation gave grid {tuple(grid.shape[-2:])}, expected {(rows, cols)}")
        patch_pos = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
        return torch.cat((cls_pos, patch_pos), dim=1).to(dtype)

    def forward_features(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """All tokens after the final norm: (B, prefix + patches, dim), prefix = cls then registers.

        masks: optional bool (B, patches); True replaces that patch embedding by `mask_token`.
        """
        _, _, height, width = images.shape
        if height % self.patch_size or width % self.patch_size:
            raise ConfigError(
                f"image size {height}x{width} is not a multiple of the encoder patch size {self.patch_size}"
            )
        x = self.patch_embed(images)
        if masks is not None:
            if self.mask_token is None:
                raise ConfigError("masks were given but this encoder has no mask_token")
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        num_patch_tokens = x.shape[1]
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(num_patch_tokens, height, width)
        if self.register_tokens is not None:
            # Registers carry no position embedding; they sit right after the cls token.
            num_cls = 1 if self.cls_token is not None else 0
            registers = self.register_tokens.expand(x.shape[0], -1, -1)
            x = torch.cat((x[:, :num_cls], registers, x[:, num_cls:]), dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1] -> patch tokens (B, (H/p)*(W/p), emb_dim)."""
        tokens = self.forward_features(images, masks)[:, self.num_prefix_tokens :]
        return self.head(tokens) if self.head is not None else tokens


@dataclass(frozen=True)
class Dinov2Preset:
    dim: int
    depth: int
    heads: int
    num_register_tokens: int = 0
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False
    swiglu: bool = False


def _with_registers(preset: Dinov2Preset) -> Dinov2Preset:
    # DINOv2's `_reg` hub models: 4 registers, antialiased interpolation to the target size.
    return Dinov2Preset(preset.dim, preset.depth, preset.heads, 4, 0.0, True, preset.swiglu)


_DINOV2_BASE = {
    "dinov2_vits14": Dinov2Preset(384, 12, 6),
    "dinov2_vitb14": Dinov2Preset(768, 12, 12),
    "dinov2_vitl14": Dinov2Preset(1024, 24, 16),
    "dinov2_vitg14": Dinov2Preset(1536, 40, 24, swiglu=True),
}
DINOV2_PRESETS: dict[str, Dinov2Preset] = {
    **_DINOV2_BASE,
    **{f"{name}_reg": _with_registers(preset) for name, preset in _DINOV2_BASE.items()},
}
DINOV2_PATCH_SIZE = 14
DINOV2_IMG_SIZE = 518  # pretraining resolution: a 37 x 37 grid of position embeddings


def dinov2_vit(preset: str, **overrides) -> VisionTransformer:
    """A DINOv2 ViT/14 with the hub model's layout (random weights; see `load_dinov2_weights`).

    `overrides` replace constructor arguments (e.g. `depth=2` for a fast test).
    """
    if preset not in DINOV2_PRESETS:
        raise ConfigError(f"unknown DINOv2 preset {preset!r}; valid: {', '.join(sorted(DINOV2_PRESETS))}")
    arch = DINOV2_PRESETS[preset]
    if arch.swiglu:
        raise ConfigError(
            f"{preset} uses a SwiGLU MLP, which wmquant's shared transformer block does not implement; "
            "use dinov2_vits14, dinov2_vitb14 or dinov2_vitl14 (or their _reg variants)"
        )
    kwargs = dict(
        img_size=DINOV2_IMG_SIZE,
        patch_size=DINOV2_PATCH_SIZE,
        dim=arch.dim,
        depth=arch.depth,
        heads=arch.heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        layerscale_init=1.0,
        norm_eps=1e-6,
        cls_token=True,
        num_register_tokens=arch.num_register_tokens,
        mask_token=True,
        interpolate_offset=arch.interpolate_offset,
        interpolate_antialias=arch.interpolate_antialias,
        name=preset,
    )
    kwargs.update(overrides)
    return VisionTransformer(**kwargs)


# --- DINOv2 weight files --------------------------------------------------------------------------

_HF_TOP_LEVEL = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
# Per-layer names; transformers >= 5 uses q_proj/k_proj/v_proj/o_proj in memory but still writes
# the older names to disk, so files with either spelling are accepted.
_HF_LAYER = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "layer_scale1": "ls1.gamma",
    "layer_scale2": "ls2.gamma",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_HF_QKV = {
    "attention.attention.query": 0,
    "attention.attention.key": 1,
    "attention.attention.value": 2,
    "attention.q_proj": 0,
    "attention.k_proj": 1,
    "attention.v_proj": 2,
}
_HF_LAYER_KEY = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")


def load_dinov2_weights(model: VisionTransformer, path: str | Path) -> None:
    """Load DINOv2 weights into `model` in place, with an exact key mapping.

    path: a torch-hub state dict (`dinov2_vits14_pretrain.pth`, read with weights_only=True) or a
    Hugging Face directory (`config.json` + `model.safetensors`, `Dinov2Model` key layout). The
    model's own `head` (if any) is not part of DINOv2 and is left unchanged. Missing or unexpected
    keys, shape mismatches and architecture mismatches raise CheckpointError naming the file.
    """
    path = Path(path)
    if path.is_dir():
        tensors, source = _read_hf_dinov2(path, model), str(path / "model.safetensors")
    elif path.is_file():
        tensors, source = _read_hub_dinov2(path), str(path)
    else:
        raise CheckpointError(
            f"{path}: no such file or directory; expected a DINOv2 torch-hub checkpoint "
            "(e.g. dinov2_vits14_pretrain.pth) or a Hugging Face directory with config.json and model.safetensors"
        )
    assign_exact(model, tensors, source, "DINOv2 weights", skip_prefixes=("head.",))


def _read_hub_dinov2(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated, corrupt or unsafe files
        raise CheckpointError(f"{path}: cannot read as a torch-hub DINOv2 state dict ({first_line(exc)})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a flat state dict of tensors (torch-hub DINOv2 layout), got {type(state).__name__}")
    return dict(state)


def _read_hf_dinov2(directory: Path, model: VisionTransformer) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    config_path, weights_path = directory / "config.json", directory / "model.safetensors"
    for required in (config_path, weights_path):
        if not required.is_file():
            raise CheckpointError(f"{required}: missing; a Hugging Face DINOv2 directory needs config.json and model.safetensors")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: not valid JSON ({exc})") from exc
    _check_hf_config(config, model, config_path)
    try:
        hf_tensors = load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own error type for corrupt headers
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({first_line(exc)})") from exc
    tensors = _hf_to_hub_names(hf_tensors, weights_path)
    if not config.get("use_mask_token", True) and model.mask_token is not None:
        # Such a model was saved without its (unused at inference) mask token.
        tensors["mask_token"] = torch.zeros_like(model.mask_token)
    return tensors


def _check_hf_config(config: dict, model: VisionTransformer, config_path: Path) -> None:
    model_type = config.get("model_type")
    if model_type not in ("dinov2", "dinov2_with_registers"):
        raise CheckpointError(f"{config_path}: model_type {model_type!r} is not a DINOv2 model (dinov2 or dinov2_with_registers)")
    if config.get("use_swiglu_ffn", False):
        raise CheckpointError(f"{config_path}: use_swiglu_ffn=true (ViT-g) is not supported")
    if config.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{config_path}: hidden_act {config.get('hidden_act')!r} is not supported (only gelu)")
    hidden = config.get("hidden_size")
    expected = {
        "hidden_size": (hidden, model.dim),
        "num_hidden_layers": (config.get("num_hidden_layers"), len(model.blocks)),
        "num_attention_heads": (config.get("num_attention_heads"), model.heads),
        "mlp hidden size": (int(hidden * config.get("mlp_ratio", 4)) if hidden else None, model.mlp_dim),
        "patch_size": (config.get("patch_size"), model.patch_size),
        "image_size": (config.get("image_size"), model.img_size),
        "num_register_tokens": (config.get("num_register_tokens", 0), model.num_register_tokens),
        "qkv_bias": (config.get("qkv_bias", True), model.blocks[0].attn.qkv.bias is not None),
    }
    mismatches = [f"{key} {found} (model: {wanted})" for key, (found, wanted) in expected.items() if found != wanted]
    eps = config.get("layer_norm_eps", 1e-6)
    if not math.isclose(eps, model.norm_eps, rel_tol=1e-9):
        mismatches.append(f"layer_norm_eps {eps} (model: {model.norm_eps})")
    if mismatches:
        raise CheckpointError(f"{config_path}: architecture does not match the model {model.name}: " + "; ".join(mismatches))


def _hf_to_hub_names(hf_tensors: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """Rename a `Dinov2Model` state dict to DINOv2's names, concatenating q, k, v into qkv."""
    tensors: dict[str, torch.Tensor] = {}
    qkv_parts: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    unknown = []
    for name, tensor in hf_tensors.items():
        if name in _HF_TOP_LEVEL:
            tensors[_HF_TOP_LEVEL[name]] = tensor
            continue
        match = _HF_LAYER_KEY.match(name)
        if match is None:
            unknown.append(name)
            continue
        layer, module, leaf = int(match.group(1)), match.group(2), match.group(3)
        if module in _HF_QKV:
            qkv_parts.setdefault((layer, leaf), {})[_HF_QKV[module]] = tensor
        elif module in _HF_LAYER and (leaf == "lambda1") == module.startswith("layer_scale"):
            leaf_name = "" if leaf == "lambda1" else f".{leaf}"
            tensors[f"blocks.{layer}.{_HF_LAYER[module]}{leaf_name}"] = tensor
        else:
            unknown.append(name)
    if unknown:
        raise CheckpointError(f"{source}: unexpected keys for a Hugging Face Dinov2Model {summarize_keys(unknown)}")
    for (layer, leaf), parts in qkv_parts.items():
        if sorted(parts) != [0, 1, 2]:
            absent = [("query", "key", "value")[i] for i in range(3) if i not in parts]
            raise CheckpointError(f"{source}: layer {layer} is missing attention {'/'.join(absent)} {leaf}")
        tensors[f"blocks.{layer}.attn.qkv.{leaf}"] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
    return tensors
