"""Equivalence transforms: rescale (and shift) the channels between two operators so that the float
model computes the same function, while the Linear's input and weight change.

For a LayerNorm -> Linear pair and per-channel scale s > 0, shift d:
    x~ = (x - d) / s      (LayerNorm:  gamma <- gamma / s,  beta <- (beta - d) / s)
    W~ = W diag(s)        (Linear:     W[:, j] <- W[:, j] * s_j,  b <- b + W d)
so W~ x~ + b~ = W x + b. The v -> proj pair is exact as well: the attention output is linear in V
per head, so dividing V's channels by s and multiplying proj's columns by s cancels. For the
GELU -> fc2 pair (AWQ) a `ScaledActivation` divides the activation's output by s.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import QuantizationError

SCALE_FLOOR = 1e-5
#: (LayerNorm, Linear) pairs inside a block whose channel scale can be folded into the norm.
NORM_LINEAR_PAIRS = (("norm1", "attn.qkv"), ("norm2", "mlp.fc1"))


def smoothquant_scale(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """s_j = max|x_j|^alpha / max_o|W[o, j]|^(1 - alpha), each clamped at 1e-5 (SmoothQuant)."""
    act = act_absmax.to(weight.device, weight.dtype).clamp(min=SCALE_FLOOR)
    w = weight.detach().abs().amax(dim=0).clamp(min=SCALE_FLOOR)
    return (act.pow(alpha) / w.pow(1 - alpha)).clamp(min=SCALE_FLOOR)


def transformed_norm(gamma: torch.Tensor, beta: torch.Tensor, scale: torch.Tensor,
                     shift: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm affine parameters whose output is (x - shift) / scale."""
    if shift is not None:
        beta = beta - shift
    return gamma / scale, beta / scale


def transformed_linear(weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor,
                       shift: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Linear parameters for inputs (x - shift) / scale: W diag(s), b + W shift."""
    if shift is not None:
        moved = weight @ shift
        bias = moved if bias is None else bias + moved
    return weight * scale, bias


def check_norm(norm: nn.Module, where: str) -> None:
    if not isinstance(norm, nn.LayerNorm) or norm.weight is None or norm.bias is None:
        raise QuantizationError(f"{where} must be a LayerNorm with weight and bias to fold a channel scale into it")


@torch.no_grad()
def fold_norm_into_linear_(norm: nn.LayerNorm, linear: nn.Linear, scale: torch.Tensor,
                           shift: torch.Tensor | None = None) -> None:
    """Apply the LayerNorm -> Linear transform in place (creates the Linear bias if a shift needs one)."""
    gamma, beta = transformed_norm(norm.weight, norm.bias, scale, shift)
    weight, bias = transformed_linear(linear.weight, linear.bias, scale, shift)
    norm.weight.copy_(gamma)
    norm.bias.copy_(beta)
    linear.weight.copy_(weight)
    if bias is not None:
        if linear.bias is None:
            linear.bias = nn.Parameter(bias.clone(), requires_grad=linear.weight.requires_grad)
        else:
            linear.bias.copy_(bias)


def v_rows(attn: nn.Module) -> slice:
    """Rows of `attn.qkv` that produce V (the last third, DINOv2 / DINO-WM layout)."""
    inner = attn.proj.in_features
    if attn.qkv.out_features != 3 * inner:
        raise QuantizationError(f"attn.qkv has {attn.qkv.out_features} outputs; expected 3 x proj inputs = {3 * inner}")
    return slice(2 * inner, 3 * inner)


def qk_rows(attn: nn.Module) -> tuple[slice, slice]:
    """Rows of `attn.qkv` that produce Q and K (the first two thirds)."""
    inner = v_rows(attn).start // 2
    return slice(0, inner), slice(inner, 2 * inner)


def attention_let(qkv_weight: torch.Tensor, qkv_bias: torch.Tensor | None, proj_weight: torch.Tensor,
                  attn: nn.Module, v_scale: torch.Tensor | None, qk_scale: torch.Tensor | None):
    """OmniQuant's attention equivalences as new tensors (differentiable): V rows of qkv / v_scale
    with proj's columns * v_scale (the attention output is linear in V per head), and Q rows /
    qk_scale with K rows * qk_scale (each q_j k_j product is unchanged). Returns (qkv weight, qkv
    bias, proj weight)."""
    q, k = qk_rows(attn)
    v = v_rows(attn)
    row_scale = torch.ones(qkv_weight.shape[0], dtype=qkv_weight.dtype, device=qkv_weight.device)
    if v_scale is not None:
        row_scale = torch.cat([row_scale[: v.start], 1.0 / v_scale])
        proj_weight = proj_weight * v_scale[None, :]
    if qk_scale is not None:
        row_scale = torch.cat([row_scale[q] / qk_scale, row_scale[k] * qk_scale, row_scale[v]])
    weight = qkv_weight * row_scale[:, None]
    bias = None if qkv_bias is None else qkv_bias * row_scale
    return weight, bias, proj_weight


@torch.no_grad()
def fold_v_into_proj_(attn: nn.Module, scale: torch.Tensor) -> None:
    """V channels / s, proj columns * s (exact: attention output is linear in V per head)."""
    rows = v_rows(attn)
    attn.qkv.weight[rows] /= scale[:, None]
    if attn.qkv.bias is not None:
        attn.qkv.bias[rows] /= scale
    attn.proj.weight *= scale


class ScaledActivation(nn.Module):
    """act(x) / scales: lets AWQ move a per-channel scale from after GELU into fc2's columns."""

    def __init__(self, act: nn.Module, scales: torch.Tensor) -> None:
        super().__init__()
        self.act = act
        self.register_buffer("scales", scales.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x) / self.scales


@torch.no_grad()
def fold_act_into_linear_(mlp: nn.Module, scale: torch.Tensor) -> None:
    """mlp.act -> ScaledActivation(act, s) and fc2 columns * s."""
    if isinstance(mlp.act, ScaledActivation):
        mlp.act.scales *= scale
    else:
        mlp.act = ScaledActivation(mlp.act, scale)
    mlp.fc2.weight *= scale
