"""OMSE: choose each weight group's clipping range by a grid search on a squared error.

Two objectives (option `objective`):
* "weight" (what QuantWM's code does): per (row, group), the reconstruction SSE of that group's
  weights, over clip ratios 0.35..1.0 (101 values); ties keep the smaller ratio.
* "output" (what the paper describes): the layer's output SSE on the calibration inputs,
  sum_t ||(W_hat - W) x_t||^2 = sum_rows e H e^T with H = sum_t x_t x_t^T recorded in pass 1. A row
  shares one ratio first (searched exactly per row), then each group's ratio is refined by one
  sweep of coordinate descent that accepts only strict improvements. The ratio 1 (minmax) is a
  candidate, so the result is never worse than minmax on this objective.
Activations: `activation_search` switches static per-tensor ranges to the OMSE shrink search
(QuantWM's README runs OMSE with minmax activations, the default here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import qmath
from ..api import active_targets
from ..recorders import CalibrationData
from ..config import QuantConfig
from ..layers import WeightQParams
from .base import QuantConfigError, MethodResult, PTQMethod, Requirements, check_choice, register_method


@dataclass
class OMSEOptions:
    objective: str = "weight"
    clip_start: float = 0.35
    clip_stop: float = 1.0
    clip_steps: int = 101
    activation_search: bool = False

    def __post_init__(self) -> None:
        check_choice(self, "objective", ("weight", "output"))
        check_choice(self, "activation_search", (True, False))
        qmath.clip_ratio_grid(self.clip_start, self.clip_stop, self.clip_steps)


def output_sse_rows(error: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """Per output row: e H e^T = sum over calibration rows of (e . x_t)^2. error (out, in)."""
    return ((error @ gram) * error).sum(dim=1)


def search_output_clip_ratios(weight: torch.Tensor, gram: torch.Tensor, bits: int, group_size: int | None,
                              symmetric: bool, ratios: torch.Tensor, quantwm_scale: bool = False) -> torch.Tensor:
    """(out, n_groups) clip ratios minimising the layer output SSE; weight (out, in), gram (in, in)."""
    w = weight.detach().double()
    gram = gram.double().to(w.device)

    def quantized(block: torch.Tensor, ratio: float, groups: int | None) -> torch.Tensor:
        return qmath.fake_quantize_weight(block, bits, groups, symmetric, clip_max=ratio, clip_min=ratio,
                                          quantwm_scale=quantwm_scale)

    # 1. one ratio per row, exact row error
    best_err = best_ratio = best_error = None
    for ratio in ratios.tolist():
        error = quantized(w, ratio, group_size) - w
        err = output_sse_rows(error, gram)
        if best_err is None:
            best_err, best_ratio, best_error = err, torch.full_like(err, ratio), error
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, torch.full_like(err, ratio), best_ratio)
        best_error = torch.where(better[:, None], error, best_error)
    sizes = qmath.group_sizes(w.shape[1], group_size)
    result = best_ratio[:, None].repeat(1, len(sizes))
    if len(sizes) == 1:
        return result.to(weight.dtype)

    # 2. one coordinate-descent sweep over groups: err = const + 2 e_g.C + e_g H_gg e_g^T
    error, err = best_error.clone(), best_err.clone()
    start = 0
    for g, size in enumerate(sizes):
        cols = slice(start, start + size)
        start += size
        others = error.clone()
        others[:, cols] = 0
        cross = others @ gram[:, cols]
        const = output_sse_rows(others, gram)
        gram_gg = gram[cols, cols]
        for ratio in ratios.tolist():
            e_g = quantized(w[:, cols], ratio, None) - w[:, cols]
            cand = const + 2 * (e_g * cross).sum(dim=1) + ((e_g @ gram_gg) * e_g).sum(dim=1)
            better = cand < err
            if bool(better.any()):
                err = torch.where(better, cand, err)
                result[:, g] = torch.where(better, torch.full_like(cand, ratio), result[:, g])
                error[:, cols] = torch.where(better[:, None], e_g, error[:, cols])
    return result.to(weight.dtype)


@register_method("omse")
class OMSE(PTQMethod):
    display_name = "OMSE"
    options = OMSEOptions

    def check_config(self, qconfig: QuantConfig, options: OMSEOptions) -> None:
        super().check_config(qconfig, options)
        for part, scheme in qconfig.named_schemes():
            if scheme.quantizes_weights and scheme.minmax_quantwm_scale:
                raise QuantConfigError(
                    f"{part}: quantwm_weight_scale with method omse needs w_observer='omse': QuantWM's OMSE divides by "
                    "2^(b-1) - 1, not by its minmax denominator (2^b - 1)/2")

    def requirements(self, options: OMSEOptions) -> Requirements:
        return Requirements(layer_inputs=options.objective == "output")

    def transform(self, model: nn.Module, qconfig: QuantConfig, calib: CalibrationData, options: OMSEOptions) -> MethodResult:
        ratios = qmath.clip_ratio_grid(options.clip_start, options.clip_stop, options.clip_steps)
        qparams: dict[str, WeightQParams] = {}
        mean_ratio: dict[str, float] = {}
        for target in active_targets(model, qconfig):
            scheme = target.scheme
            if target.is_tap or not scheme.quantizes_weights:
                continue
            weight = qmath.as_2d_weight(target.module.weight.detach())
            if options.objective == "weight":
                chosen = qmath.search_weight_clip_ratios(weight, scheme.w_bits, scheme.w_group_size, scheme.w_symmetric,
                                                         ratios, scheme.minmax_quantwm_scale)
            else:
                gram, _ = calib.layer_grams[target.name]
                chosen = search_output_clip_ratios(weight, gram, scheme.w_bits, scheme.w_group_size, scheme.w_symmetric,
                                                   ratios, scheme.minmax_quantwm_scale)
            qparams[target.name] = WeightQParams(clip_max=chosen, clip_min=chosen)
            mean_ratio[target.name] = float(chosen.double().mean())
        return MethodResult(
            weight_qparams=qparams,
            act_observer="omse" if options.activation_search else None,
            report={"objective": options.objective, "mean_clip_ratio": mean_ratio},
        )
