"""The quantization verbs: `quantize_`, `observe_activations`, `freeze_`, `set_quantization_`, `quant_summary`.

    quantize_(model, QuantConfig.uniform(w_bits=4, a_bits=8))     # swap target modules in place
    with observe_activations(model):                                 # float forward, observers on
        run_calibration()
    freeze_(model)                                                   # static ranges from what was seen
    set_quantization_(model, True)

Right after `quantize_`, weights and per-token activations are quantized, and static per-tensor
activation quantizers are off until they are calibrated and frozen.
"""

from __future__ import annotations

import contextlib
import fnmatch
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
from torch import nn

from ..errors import QuantizationError
from . import qmath
from .config import PARTS, QuantConfig, QuantScheme
from .layers import (
    QUANTIZED_LAYER_TYPES,
    ActQuantizer,
    ActRangeClip,
    WeightQParams,
    make_act_quantizer,
    quantized_version,
)


@dataclass(frozen=True)
class Target:
    """A module selected by a QuantConfig: its name, the module, and the scheme that applies."""

    name: str
    module: nn.Module
    scheme: QuantScheme

    @property
    def is_tap(self) -> bool:
        return isinstance(self.module, nn.Identity)


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _quantizable(name: str, module: nn.Module) -> bool:
    is_tap = isinstance(module, nn.Identity) and name.rsplit(".", 1)[-1].endswith("_tap")
    return is_tap or quantized_version(module) is not None


def resolve_targets(model: nn.Module, config: QuantConfig) -> list[Target]:
    """Modules selected by `config` (Linear, Conv1d/2d, attention taps), in model order.

    Raises QuantizationError when a target pattern selects no quantizable module (likely a typo),
    or when the model is already quantized.
    """
    if any(isinstance(m, QUANTIZED_LAYER_TYPES + (ActQuantizer,)) for m in model.modules()):
        raise QuantizationError("the model is already quantized; quantize_ a fresh float model")
    selected: list[Target] = []
    used_patterns: set[str] = set()
    for name, module in model.named_modules():
        if not name or not _quantizable(name, module):
            continue
        hits = [p for p in config.targets if fnmatch.fnmatchcase(name, p)]
        if not hits:
            continue
        used_patterns.update(hits)
        if _matches(name, config.ignore):
            continue
        selected.append(Target(name, module, config.scheme_for(name)))
    unused = [p for p in config.targets if p not in used_patterns]
    if unused:
        raise QuantizationError(
            f"target pattern(s) {unused} match no Linear, Conv or attention tap (*_tap) of the model; "
            "check the module names (e.g. encoder.blocks.0.attn.qkv)"
        )
    return selected


def active_targets(model: nn.Module, config: QuantConfig) -> list[Target]:
    """Targets whose scheme quantizes something (taps only count when activations are quantized)."""
    return [
        t for t in resolve_targets(model, config)
        if (t.scheme.quantizes_activations if t.is_tap else not t.scheme.is_identity)
    ]


def check_model_finite(model: nn.Module, names: list[str] | None = None) -> None:
    """QuantizationError if a parameter (of the named modules, or of the whole model) is NaN/inf."""
    modules = [(n, model.get_submodule(n)) for n in names] if names is not None else [("", model)]
    for prefix, module in modules:
        for pname, param in module.named_parameters():
            qmath.check_finite(f"parameter {'.'.join(p for p in (prefix, pname) if p)}", param.detach())


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def quantize_(
    model: nn.Module,
    config: QuantConfig,
    weight_qparams: Mapping[str, WeightQParams] | None = None,
    act_observer: str | None = None,
    layer_schemes: Mapping[str, QuantScheme] | None = None,
    act_clips: Mapping[str, ActRangeClip] | None = None,
) -> nn.Module:
    """Swap the modules selected by `config` for fake-quantized versions, in place; returns `model`.

    weight_qparams: per module name, clip ratios or fixed qparams computed by a method.
    act_clips: per layer name, clip factors for its input quantizer's static range (learned ranges).
    act_observer: overrides every scheme's a_observer ("minmax" | "omse") for this model.
    layer_schemes: per module name, a scheme replacing the config's (mixed precision).
    """
    if not isinstance(config, QuantConfig):
        raise QuantizationError(f"quantize_ needs a QuantConfig, got {type(config).__name__}")
    if act_observer not in (None, "minmax", "omse"):
        raise QuantizationError(f"act_observer={act_observer!r} is unknown; valid: minmax, omse")
    targets = active_targets(model, config)
    check_model_finite(model, [t.name for t in targets if not t.is_tap])
    weight_qparams = dict(weight_qparams or {})
    act_clips = dict(act_clips or {})
    layer_schemes = dict(layer_schemes or {})
    unknown = sorted(set(layer_schemes) - {t.name for t in targets})
    if unknown:
        raise QuantizationError(f"layer schemes given for modules that are not quantization targets: {unknown}")
    for target in targets:
        scheme = layer_schemes.get(target.name, target.scheme)
        if act_observer is not None and scheme.a_granularity == "per_tensor":
            scheme = QuantScheme(**{**scheme.to_dict(), "a_observer": act_observer})
        if target.is_tap:
            _set_submodule(model, target.name, make_act_quantizer(scheme, target.name))
            continue
        new = quantized_version(target.module).from_float(target.module, scheme, target.name)
        qparams = weight_qparams.pop(target.name, None)
        if qparams is not None and new.weight_quantizer is not None:
            new.weight_quantizer.load_qparams(qparams, new.weight)
        clip = act_clips.pop(target.name, None)
        if clip is not None:
            if new.input_quantizer is None:
                raise QuantizationError(f"an activation range clip was given for {target.name}, whose input is not quantized")
            new.input_quantizer.load_range_clip(clip)
        _set_submodule(model, target.name, new)
    if weight_qparams:
        raise QuantizationError(f"weight qparams given for modules that are not quantized: {sorted(weight_qparams)}")
    if act_clips:
        raise QuantizationError(f"activation range clips given for modules that are not quantized layers: {sorted(act_clips)}")
    for _, module in model.named_modules():
        if isinstance(module, ActQuantizer):
            module.set_mode("off" if module.needs_calibration else "quant")
    return model


def act_quantizers(model: nn.Module) -> list[ActQuantizer]:
    return [m for m in model.modules() if isinstance(m, ActQuantizer)]


def quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QUANTIZED_LAYER_TYPES)]


@contextlib.contextmanager
def observe_activations(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block: every activation quantizer observes, and nothing is quantized (float
    forward, as the study calibrates). On exit the previous modes are restored."""
    acts = act_quantizers(model)
    weights = [m.weight_quantizer for _, m in quantized_layers(model) if m.weight_quantizer is not None]
    previous_modes = [a.mode for a in acts]
    previous_enabled = [w.enabled for w in weights]
    for act in acts:
        act.mode = "observe"
    for weight in weights:
        weight.enabled = False
    try:
        yield model
    finally:
        for act, mode in zip(acts, previous_modes):
            act.mode = mode
        for weight, enabled in zip(weights, previous_enabled):
            weight.enabled = enabled


def freeze_(model: nn.Module) -> nn.Module:
    """Compute the static activation ranges from what was observed.

    Raises QuantizationError naming the first static quantizer that saw no data.
    """
    for act in act_quantizers(model):
        if act.needs_calibration and act.running_min is None:
            act.freeze()  # raises, naming it
    for act in act_quantizers(model):
        act.freeze()
    return model


def set_quantization_(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch every quantizer on (quantized forward) or off (float forward)."""
    acts = act_quantizers(model)
    if enabled:
        for act in acts:
            if act.needs_calibration and not act.frozen:
                act.set_mode("quant")  # raises, naming the uncalibrated quantizer
    for act in acts:
        act.set_mode("quant" if enabled else "off")
    for _, layer in quantized_layers(model):
        if layer.weight_quantizer is not None:
            layer.weight_quantizer.enabled = enabled
    return model


def _part_of(name: str) -> str:
    head = name.split(".", 1)[0]
    return head if head in PARTS else "other"


def quant_summary(model: nn.Module) -> dict:
    """Per part (encoder, predictor, other): quantized layers, weight bits, activation quantizers,
    the average bits per weight, and the fewest and most weight groups per row of its quantized
    layers (1 = per-channel; G128 on a 128-wide input is also 1).

    avg_bits_per_weight: over every parameter element of the part; a quantized weight costs
    w_bits per element plus a 16-bit scale (and 16-bit zero point if asymmetric) per (row, group);
    everything else (biases, norms, embeddings, unquantized layers) costs 32 bits per element.
    avg_bits_quantized_weights: the same, restricted to the quantized weight tensors.
    """
    quantized_weights: dict[int, nn.Module] = {}
    summary: dict[str, dict] = {}

    def entry(part: str) -> dict:
        return summary.setdefault(part, {
            "quantized_layers": 0, "weight_bits": set(), "activation_quantizers": 0,
            "activation_bits": set(), "_all": [], "_quantized": [], "_groups": [],
        })

    for name, layer in quantized_layers(model):
        if layer.weight_quantizer is not None:
            quantized_weights[id(layer.weight)] = layer.weight_quantizer
            item = entry(_part_of(name))
            item["quantized_layers"] += 1
            item["weight_bits"].add(layer.weight_quantizer.bits)
            item["_groups"].append(qmath.num_groups(qmath.as_2d_weight(layer.weight).shape[1],
                                                    layer.weight_quantizer.group_size))
    for name, module in model.named_modules():
        if isinstance(module, ActQuantizer):
            item = entry(_part_of(name))
            item["activation_quantizers"] += 1
            item["activation_bits"].add(module.bits)
    for part in PARTS:
        if hasattr(model, part):
            entry(part)
    for name, param in model.named_parameters():
        part = _part_of(name)
        if part not in summary:
            continue
        quantizer = quantized_weights.get(id(param))
        if quantizer is not None:
            bits = quantizer.storage_bits(param)
            summary[part]["_quantized"].append((param.numel(), bits))
        else:
            bits = qmath.FLOAT_BITS * param.numel()
        summary[part]["_all"].append((param.numel(), bits))
    for item in summary.values():
        item["avg_bits_per_weight"] = _none_if_nan(qmath.average_bits_per_weight(item.pop("_all")))
        item["avg_bits_quantized_weights"] = _none_if_nan(qmath.average_bits_per_weight(item.pop("_quantized")))
        groups = item.pop("_groups")
        item["groups_per_row"] = {"min": min(groups), "max": max(groups)} if groups else None
        item["weight_bits"] = sorted(item["weight_bits"])
        item["activation_bits"] = sorted(item["activation_bits"])
    return summary


def _none_if_nan(value: float) -> float | None:
    return None if value != value else value


def dequantized_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights the quantized model actually computes with, keyed like its state dict."""
    state = {}
    with torch.no_grad():
        for name, layer in quantized_layers(model):
            quantizer = layer.weight_quantizer
            state[f"{name}.weight"] = layer.weight if quantizer is None else quantizer(layer.weight)
    return state
