"""Sensitivity-driven mixed precision (`method=mixed`, `method_options.budget=4.0`).

1. Sensitivity, measured on planning rollouts recorded during calibration (the world model's
   `rollout_latent(z_obs_0, actions)` calls of the CEM planner): for every quantization target,
   its weights alone and its input alone are fake-quantized at each candidate bit width (the
   weights by the target's own weight quantizer at those bits: its observer and grid), the
   recorded action sequences are rolled out again, and the damage is the rollout method's loss
   (`_rollouts.rollout_loss`: the latent error over the whole horizon plus the error of each
   candidate's cost) averaged over the recorded groups.
   A static per-tensor activation is measured with each tensor's own range (the calibrated range
   does not exist yet).
2. Allocation: weights and activations separately, each a knapsack over targets with the
   candidate widths, solved greedily: start every target at the narrowest width and repeatedly
   upgrade the target whose next width buys the largest drop in damage per added bit, while the
   average stays within the budget. Weight bits are averaged over weight elements, activation
   bits over the targets' input widths (what a token costs).
3. The chosen widths become per-layer schemes (`layer_schemes`) for quantize_.

Only the layers that a replay of the recorded rollouts runs through are allocated, jointly under
one budget per kind. With `encoder=true` (default) and the planners' observations recorded, a
replay starts from the model's own encoding of the recorded start observations, so the encoder
and the proprio embedding are measured and allocated with the predictor, and an encoder layer's
damage also counts the latent error of every frame the planners encoded (goals included; weighted
by `encoder_weight`). Otherwise a replay starts from the recorded FP latents, the encoder's layers
keep the config's widths (reported as `fixed_layers`), and the budget is the average over the
allocated layers. The report gives the averages per part as well.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import qmath
from ..config import QuantConfig, QuantConfigError
from ..layers import WeightQuantizer, input_fake_quant_hook
from ..recorders import CalibrationData
from ._rollouts import COST_TERMS, RolloutReplay
from .base import (MethodResult, PTQMethod, check_choice, check_non_negative, check_positive, progress_bar,
                   register_method)


@dataclass
class MixedOptions:
    budget: float = 4.0              # average bits for weights and for activations
    w_budget: float | None = None    # separate weight budget (default: budget)
    a_budget: float | None = None    # separate activation budget (default: budget)
    candidates: tuple[int, ...] = (3, 4, 6, 8)
    cost_weight: float = 1.0         # weight of the cost error against the rollout error
    cost_term: str = "relative"      # the cost error: relative per group, or centered (see _rollouts.rollout_loss)
    encoder: bool = True             # replay from the recorded observations: allocate the encoder too
    encoder_weight: float = 1.0      # weight of the recorded frames' encoder latent error
    n_sequences: int = 256           # recorded rollout sequences
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive(self, "budget", "n_sequences")
        check_non_negative(self, "cost_weight", "encoder_weight")
        check_choice(self, "cost_term", COST_TERMS)
        if not isinstance(self.encoder, bool):
            raise QuantConfigError(f"mixed encoder={self.encoder!r} must be true or false")
        if not self.candidates or any(not isinstance(b, int) or not 2 <= b <= 8 for b in self.candidates):
            raise QuantConfigError(f"mixed candidates={self.candidates!r} must be bit widths 2..8")
        self.candidates = tuple(sorted(set(self.candidates)))
        for name in ("w_budget", "a_budget"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise QuantConfigError(f"mixed {name}={value!r} must be a positive number")
        for name in ("budget", "w_budget", "a_budget"):
            value = getattr(self, name)
            if value is not None and value < self.candidates[0]:
                raise QuantConfigError(f"mixed {name}={value} is below the narrowest candidate ({self.candidates[0]} bits)")


def greedy_allocation(sizes: dict[str, int], damage: dict[str, dict[int, float]], candidates: tuple[int, ...],
                      budget: float) -> dict[str, int]:
    """Bits per item: each starts at the narrowest candidate; the upgrade with the largest damage
    drop per added bit that keeps sum(bits * size) <= budget * sum(size) is taken until none fits."""
    bits = {name: candidates[0] for name in sizes}
    capacity = budget * sum(sizes.values())
    used = sum(bits[n] * sizes[n] for n in sizes)
    while True:
        best, best_gain = None, None
        for name, size in sizes.items():
            position = candidates.index(bits[name])
            if position + 1 == len(candidates):
                continue
            nxt = candidates[position + 1]
            added = (nxt - bits[name]) * size
            if used + added > capacity + 1e-9:
                continue
            gain = (damage[name][bits[name]] - damage[name][nxt]) / added
            if best_gain is None or gain > best_gain:
                best, best_gain = name, gain
        if best is None:
            return bits
        used += (candidates[candidates.index(bits[best]) + 1] - bits[best]) * sizes[best]
        bits[best] = candidates[candidates.index(bits[best]) + 1]


def average_bits(bits: dict[str, int], sizes: dict[str, int]) -> float:
    return sum(bits[n] * sizes[n] for n in bits) / max(sum(sizes[n] for n in bits), 1)


def _averages_by_part(w_bits: dict[str, int], w_sizes: dict[str, int], a_bits: dict[str, int],
                      a_sizes: dict[str, int]) -> dict[str, dict[str, float]]:
    """{part (the name's first component): {"weights": average bits, "activations": ...}}."""
    averages: dict[str, dict[str, float]] = {}
    for kind, bits, sizes in (("weights", w_bits, w_sizes), ("activations", a_bits, a_sizes)):
        for part in sorted({name.split(".", 1)[0] for name in bits}):
            names = {n: b for n, b in bits.items() if n.split(".", 1)[0] == part}
            averages.setdefault(part, {})[kind] = average_bits(names, sizes)
    return averages


@register_method("mixed")
class MixedPrecision(PTQMethod):
    display_name = "Mixed"
    needs_rollouts = True
    chooses_widths = True
    options = MixedOptions

    def transform(self, model: nn.Module, qconfig: QuantConfig, calib: CalibrationData, options: MixedOptions) -> MethodResult:
        replay = RolloutReplay.with_options(model, calib, options)
        targets, fixed = replay.split_targets(model, qconfig)
        # perturbing a layer the encoding does not call leaves the encoder's outputs at float:
        # its replays reuse the float start latents (the same damage, without encoding anything)
        encoding = set(replay.encoder_layers(model, [t.name for t in targets]))
        w_damage: dict[str, dict[int, float]] = {}
        a_damage: dict[str, dict[int, float]] = {}
        replays = sum(t.scheme.quantizes_weights + t.scheme.quantizes_activations for t in targets)
        with progress_bar(replays * len(options.candidates), "mixed") as bar:
            for target in targets:
                layer, scheme = target.module, target.scheme
                bar.set_postfix(layer=target.name)
                if scheme.quantizes_weights:
                    original = layer.weight.detach().clone()
                    w_damage[target.name] = {}
                    for bits in options.candidates:
                        # the layer's own weight quantizer at these bits: its observer and grid, as inference will use them
                        quantizer = WeightQuantizer(dataclasses.replace(scheme, w_bits=bits))
                        with torch.no_grad():
                            layer.weight.copy_(quantizer(original).to(original.dtype))
                        w_damage[target.name][bits] = replay.mean_loss(model, float_encoder=target.name not in encoding)
                        bar.update()
                    with torch.no_grad():
                        layer.weight.copy_(original)
                if scheme.quantizes_activations:
                    a_damage[target.name] = {}
                    for bits in options.candidates:
                        handle = layer.register_forward_pre_hook(input_fake_quant_hook(scheme, bits))
                        try:
                            a_damage[target.name][bits] = replay.mean_loss(model, float_encoder=target.name not in encoding)
                        finally:
                            handle.remove()
                        bar.update()
        by_name = {t.name: t for t in targets}
        w_sizes = {n: by_name[n].module.weight.numel() for n in w_damage}
        # what a token costs: the input width of one output (a Conv's in_channels x kernel)
        a_sizes = {n: qmath.as_2d_weight(by_name[n].module.weight).shape[1] for n in a_damage}
        w_budget = options.w_budget if options.w_budget is not None else options.budget
        a_budget = options.a_budget if options.a_budget is not None else options.budget
        w_bits = greedy_allocation(w_sizes, w_damage, options.candidates, w_budget) if w_sizes else {}
        a_bits = greedy_allocation(a_sizes, a_damage, options.candidates, a_budget) if a_sizes else {}
        schemes = {}
        for target in targets:
            changes: dict[str, Any] = {}
            if target.name in w_bits:
                changes["w_bits"] = w_bits[target.name]
            if target.name in a_bits:
                changes["a_bits"] = a_bits[target.name]
            if changes:
                schemes[target.name] = dataclasses.replace(target.scheme, **changes)
        report = {
            "weight_bits": w_bits, "activation_bits": a_bits,
            "average_weight_bits": average_bits(w_bits, w_sizes) if w_bits else None,
            "average_activation_bits": average_bits(a_bits, a_sizes) if a_bits else None,
            "budget": {"weights": w_budget, "activations": a_budget},
            "weight_damage": w_damage, "activation_damage": a_damage,
            "average_bits_by_part": _averages_by_part(w_bits, w_sizes, a_bits, a_sizes),
            "rollout_sequences": replay.num_sequences,
            "through_encoder": replay.through_encoder, "encoder_not_replayed": replay.encoder_reason,
            "fixed_layers": fixed,
        }
        return MethodResult(layer_schemes=schemes, report=report)
