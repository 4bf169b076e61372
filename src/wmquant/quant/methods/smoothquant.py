"""SmoothQuant: move activation outliers into the weights with a per-channel scale.

For each pair, s_j = max|x_j|^alpha / max_o|W[o, j]|^(1 - alpha) (both clamped at 1e-5), from the
`wmquant plan-act` statistics of the Linear's input. Pairs, in every block of every part that has
a quantized target: norm1 -> attn.qkv and norm2 -> mlp.fc1 (as QuantWM); optionally
(`fc_fc=True`) the V part of attn.qkv -> attn.proj, which is exact because the attention output is
linear in V per head. The float model's outputs do not change; quantize_ then runs as RTN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from ...errors import QuantizationError
from ..recorders import CalibrationData
from ..config import PARTS, QuantConfig
from ._blockwise import block_targets
from ._equivalence import (
    NORM_LINEAR_PAIRS,
    check_norm,
    fold_norm_into_linear_,
    fold_v_into_proj_,
    smoothquant_scale,
)
from .base import MethodResult, PTQMethod, QuantConfigError, missing_stats_error, register_method


@dataclass
class SmoothQuantOptions:
    alpha: float = 0.5
    fc_fc: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha <= 1.0:
            raise QuantConfigError(f"SmoothQuant alpha={self.alpha!r} must be a number in [0, 1]")
        if not isinstance(self.fc_fc, bool):
            raise QuantConfigError(f"SmoothQuant fc_fc={self.fc_fc!r} must be true or false")


def smoothing_plan(model: nn.Module, qconfig: QuantConfig, fc_fc: bool) -> list[tuple[str, int, str | None, str]]:
    """(part, block index, LayerNorm or None for the v -> proj pair, smoothed Linear) for every
    pair whose Linear is an active target."""
    plan = []
    for part in PARTS:
        for index, targets in sorted(block_targets(model, qconfig, part).items()):
            for norm, linear in NORM_LINEAR_PAIRS:
                if linear in targets:
                    plan.append((part, index, norm, linear))
            if fc_fc and "attn.proj" in targets:
                plan.append((part, index, None, "attn.proj"))
    return plan


def _stat(act_stats: Mapping[str, torch.Tensor], key: str, width: int) -> torch.Tensor:
    if key not in act_stats:
        raise missing_stats_error(key)
    value = act_stats[key]
    if value.numel() != width:
        raise QuantizationError(f"activation statistic {key!r} has {value.numel()} channels; the layer has {width} inputs")
    return value


@register_method("smoothquant")
class SmoothQuant(PTQMethod):
    display_name = "SmoothQuant"
    folds_channel_scales = True
    supports_float_formats = True
    needs_act_stats = True
    options = SmoothQuantOptions

    def check_model(self, model, qconfig, options, act_stats) -> None:
        for part, index, _, linear in smoothing_plan(model, qconfig, options.fc_fc):
            key = f"{part}.blocks.{index}.{linear}"
            _stat(act_stats, key, model.get_submodule(key).in_features)

    def transform(self, model: nn.Module, qconfig: QuantConfig, calib: CalibrationData,
                  options: SmoothQuantOptions) -> MethodResult:
        smoothed = []
        for part, index, norm_name, linear in smoothing_plan(model, qconfig, options.fc_fc):
            block = model.get_submodule(f"{part}.blocks.{index}")
            key = f"{part}.blocks.{index}.{linear}"
            layer = block.get_submodule(linear)
            scale = smoothquant_scale(_stat(calib.act_stats, key, layer.in_features), layer.weight, options.alpha)
            if norm_name is None:
                fold_v_into_proj_(block.attn, scale)
            else:
                norm = block.get_submodule(norm_name)
                check_norm(norm, f"{part}.blocks.{index}.{norm_name}")
                fold_norm_into_linear_(norm, layer, scale)
            smoothed.append(key)
        return MethodResult(report={"alpha": options.alpha, "smoothed_layers": smoothed})
