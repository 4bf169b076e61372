"""`wmquant plan-act` statistics: the per-input-channel max|x| of every Linear, keyed by module name.

SmoothQuant needs them and OmniQuant's LET starts from them. They are gathered on the
calibration episodes by `ActStatsRecorder` (forward hooks, so the planner runs unaware) and stored
as safetensors: one float32 tensor of shape (in_features,) per module name, e.g.
`predictor.blocks.3.attn.qkv`. QuantWM's own `.pt` files (a pickled dict with its module names) can
be read too, with `torch.load(weights_only=True)`; their keys are mapped onto wmquant's names.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import QuantizationError
from ..io import atomic_path
from . import qmath
from .hooks import ForwardHooks

PLAN_ACT_COMMAND = "wmquant plan-act"
FORMAT_NAME = "wmquant-act-stats"

#: QuantWM module names (spec 5.1) -> wmquant names.
_QUANTWM_KEYS = (
    (re.compile(r"^encoder\.base_model\.blocks\.(\d+)\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)$"), r"encoder.blocks.\1.\2"),
    (re.compile(r"^predictor\.transformer\.layers\.(\d+)\.(?:attn|0)\.to_qkv$"), r"predictor.blocks.\1.attn.qkv"),
    (re.compile(r"^predictor\.transformer\.layers\.(\d+)\.(?:attn|0)\.to_out\.0$"), r"predictor.blocks.\1.attn.proj"),
    (re.compile(r"^predictor\.transformer\.layers\.(\d+)\.(?:ff|1)\.net\.1$"), r"predictor.blocks.\1.mlp.fc1"),
    (re.compile(r"^predictor\.transformer\.layers\.(\d+)\.(?:ff|1)\.net\.4$"), r"predictor.blocks.\1.mlp.fc2"),
)


def canonical_stats_key(name: str) -> str:
    """wmquant's module name for a statistics key; QuantWM names are mapped, others kept."""
    for pattern, replacement in _QUANTWM_KEYS:
        if pattern.match(name):
            return pattern.sub(replacement, name)
    return name


class ActStatsRecorder(ForwardHooks):
    """Running per-input-channel max|x| of every nn.Linear whose name starts with one of `prefixes`.

    Use as a context manager; `stats()` returns {module name: float32 (in_features,)} on the CPU.
    QuantLinear is an nn.Linear, so a quantized model can be recorded as well (its raw input).
    """

    def __init__(self, model: nn.Module, prefixes: tuple[str, ...] = ("encoder", "predictor")) -> None:
        super().__init__()
        self._maxima: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and any(name == p or name.startswith(p + ".") for p in prefixes):
                self.calls[name] = 0
                self._handles.append(module.register_forward_pre_hook(self._hook(name)))
        if not self._handles:
            raise QuantizationError(f"no nn.Linear found under {list(prefixes)}; nothing to record")

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            with torch.inference_mode(False), torch.no_grad():
                x = args[0].detach()
                current = x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float()
                seen = self._maxima.get(name)
                self._maxima[name] = current if seen is None else torch.maximum(seen, current)
                self.calls[name] += 1
        return hook

    def stats(self) -> dict[str, torch.Tensor]:
        return {name: value.cpu().clone() for name, value in self._maxima.items()}


def validate_act_stats(stats: Mapping[str, torch.Tensor],
                       source: str = "activation statistics") -> dict[str, torch.Tensor]:
    """Checked copy: 1-D, finite, non-negative float32 CPU tensors keyed by wmquant module names."""
    checked = {}
    for name, value in stats.items():
        if not isinstance(value, torch.Tensor) or value.dim() != 1 or value.numel() == 0:
            raise QuantizationError(f"{source}: entry {name!r} must be a non-empty 1-D tensor (max|x| per channel)")
        qmath.check_finite(f"{source}: entry {name!r}", value)
        if bool((value < 0).any()):
            raise QuantizationError(f"{source}: entry {name!r} has negative values; max|x| cannot be negative")
        checked[canonical_stats_key(name)] = value.detach().float().cpu().contiguous()
    if not checked:
        raise QuantizationError(f"{source}: no statistics in it")
    return checked


def save_act_stats(path: str | os.PathLike, stats: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """Write the statistics atomically as safetensors; returns the path."""
    checked = validate_act_stats(stats, "statistics to save")
    meta = {"format": FORMAT_NAME, "statistic": "max_abs_input_per_channel", **dict(metadata or {})}
    with atomic_path(path) as tmp:
        save_file(checked, str(tmp), metadata={k: str(v) for k, v in meta.items()})
    return Path(path)


def load_act_stats(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read statistics from safetensors (or QuantWM's `.pt`); keys are wmquant module names."""
    path = Path(path)
    if not path.is_file():
        raise QuantizationError(
            f"activation statistics file {path} does not exist; make it with `{PLAN_ACT_COMMAND}` for this model"
        )
    if path.suffix == ".pt":
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # the unpickler raises many types for corrupt or unsafe files
            raise QuantizationError(f"cannot read activation statistics {path}: {err}") from None
        if not isinstance(raw, Mapping):
            raise QuantizationError(f"{path} holds a {type(raw).__name__}; expected a dict of module name -> tensor")
        return validate_act_stats(raw, str(path))
    try:
        raw = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise QuantizationError(f"cannot read activation statistics {path}: {err}") from None
    return validate_act_stats(raw, str(path))
