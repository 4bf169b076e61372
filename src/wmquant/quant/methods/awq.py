"""AWQ: activation-aware per-channel weight scaling, then a clipping search; weight-only.

Block by block, on recorded block inputs propagated through the float blocks:

1. Scale search, for each pair (named by the scaled Linear):
   "qkv":  norm1 -> attn.qkv, loss on the attention output (attn is re-run on its captured input);
   "proj": V rows of attn.qkv -> attn.proj, loss on proj's output;
   "fc1":  norm2 -> mlp.fc1, loss on the mlp output;
   "fc2":  mlp.act -> mlp.fc2 through a `ScaledActivation` (GELU is not scale-equivariant, so the
           scale is divided out right after it), loss on fc2's output.
   Candidates s = mean|x|^r (clamped at 1e-4) normalised by sqrt(max(s) min(s)), r = i / n_grid,
   i = 0..n_grid-1. r = 0 gives s = 1 exactly, and only a strictly lower loss replaces it, so the
   chosen scale is never worse than s = 1. The loss is the MSE of the inspected module's output
   with the pair's weights quantized as W <- Q(W diag(s)) diag(s)^-1, Q being THE SAME quantizer
   as inference (the scheme's bits, symmetry, group size, minmax).
2. Each chosen scale is folded into the float weights at once. This is an exact equivalence, so
   the remaining searches (which re-run sub-modules on their captured inputs) are unaffected.
3. Clip search per Linear (for attn.qkv, V's rows only unless `clip_qk`, as llm-awq skips q and k):
   for each (row, group), clip ratios f = 1, 1 - 1/clip_grid, ...
   (down to 1 - max_shrink): Q with the group's range shrunk by f (values beyond it clamp to the
   ends of the integer range); loss = mean over tokens of the group's
   partial output error (sum_j x_j (w_hat_j - w_j))^2. f = 1 is tried first; the winners are
   handed to the weight quantizer as clip ratios, so the float weights stay as scaled.
The final grid is computed by quantize_ from the scaled weights and the chosen ratios, so it is
exactly the grid the searches evaluated (QuantWM instead kept scales frozen from the pre-AWQ
weights).
The next block's inputs are the float block's outputs before it was changed (AWQ's choice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .. import qmath
from ..recorders import CalibrationData
from ..config import QuantConfig, QuantScheme
from ..layers import WeightQParams
from ._blockwise import Captured, SquaredError, block_targets, model_device, run_and_capture, run_block, split_calls
from ._equivalence import check_norm, fold_act_into_linear_, fold_norm_into_linear_, fold_v_into_proj_, v_rows
from .base import MethodResult, PTQMethod, QuantConfigError, check_positive, register_method

PAIRS = ("qkv", "proj", "fc1", "fc2")
SCALE_FLOOR = 1e-4


@dataclass
class AWQOptions:
    pairs: tuple[str, ...] = PAIRS
    n_grid: int = 20
    clip: bool = True
    clip_qk: bool = False  # llm-awq leaves the q and k rows unclipped (their products feed a softmax)
    clip_grid: int = 20
    max_shrink: float = 0.5
    clip_max_tokens: int = 512
    n_samples: int = 128
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [p for p in self.pairs if p not in PAIRS]
        if unknown:
            raise QuantConfigError(f"AWQ pairs {unknown} are unknown; valid: {', '.join(PAIRS)}")
        check_positive(self, "n_grid", "clip_grid", "clip_max_tokens", "n_samples", "batch_size")
        for name in ("clip", "clip_qk"):
            if not isinstance(getattr(self, name), bool):
                raise QuantConfigError(f"AWQ {name}={getattr(self, name)!r} must be true or false")
        if not 0.0 <= self.max_shrink < 1.0:
            raise QuantConfigError(f"AWQ max_shrink={self.max_shrink!r} must be in [0, 1)")


def quantize_like_inference(weight: torch.Tensor, scheme: QuantScheme,
                            clip: torch.Tensor | float | None = None) -> torch.Tensor:
    """Q(W): the minmax fake quantizer that quantize_ applies, with the scheme's settings and
    optional clip ratios (per (row, group), as handed to the weight quantizer)."""
    return qmath.fake_quantize_weight(weight, scheme.w_bits, scheme.w_group_size, scheme.w_symmetric,
                                      clip_max=clip, clip_min=clip, quantwm_scale=scheme.minmax_quantwm_scale)


def candidate_scale(act_mean: torch.Tensor, ratio: float) -> torch.Tensor:
    scale = act_mean.pow(ratio).clamp(min=SCALE_FLOOR)
    return scale / (scale.max() * scale.min()).sqrt()


def scaled_quant_loss(inspect: Callable[[], list[torch.Tensor]], reference: list[torch.Tensor],
                      linears: list[tuple[nn.Linear, QuantScheme]], scale: torch.Tensor) -> float:
    """MSE of `inspect()` against `reference` with each Linear's weight set to Q(W s) / s."""
    originals = [linear.weight.detach().clone() for linear, _ in linears]
    try:
        with torch.no_grad():
            for (linear, scheme), weight in zip(linears, originals):
                linear.weight.copy_(quantize_like_inference(weight * scale, scheme) / scale)
            error = SquaredError()
            for out, ref in zip(inspect(), reference):
                error.add(out, ref)
        return error.mean
    finally:
        with torch.no_grad():
            for (linear, _), weight in zip(linears, originals):
                linear.weight.copy_(weight)


def search_scale(inspect: Callable[[], list[torch.Tensor]], linears: list[tuple[nn.Linear, QuantScheme]],
                 act_mean: torch.Tensor, n_grid: int) -> tuple[torch.Tensor, dict]:
    """Best s over the grid (r = 0, i.e. s = 1, first); returns (s, losses report)."""
    with torch.no_grad():
        reference = inspect()
    best_scale, best_loss, best_ratio, loss_s1 = None, float("inf"), 0.0, None
    for i in range(n_grid):
        ratio = i / n_grid
        scale = candidate_scale(act_mean, ratio)
        loss = scaled_quant_loss(inspect, reference, linears, scale)
        if i == 0:
            loss_s1 = loss
        if loss < best_loss:
            best_scale, best_loss, best_ratio = scale, loss, ratio
    return best_scale, {"ratio": best_ratio, "loss": best_loss, "loss_s1": loss_s1}


@torch.no_grad()
def search_clip(weight: torch.Tensor, rows_x: torch.Tensor, scheme: QuantScheme, factors: list[float],
                row_chunk: int = 256) -> torch.Tensor:
    """Best clip ratio per (row, group), shape (out, n_groups); rows_x (tokens, in).

    A ratio f quantizes with the group's max and min shrunk by f (values beyond are clamped to the
    integer range), exactly as the weight quantizer will with these ratios as clip_max / clip_min.
    """
    group_size = scheme.w_group_size
    x_groups = qmath.to_groups(rows_x, group_size)  # (T, n_groups, G)
    best_factor = torch.ones(weight.shape[0], x_groups.shape[1], dtype=weight.dtype, device=weight.device)
    for start in range(0, weight.shape[0], row_chunk):
        w = weight[start:start + row_chunk]
        w_groups = qmath.to_groups(w, group_size)
        reference = torch.einsum("tgk,ogk->tog", x_groups, w_groups)
        best_err = None
        for factor in factors:
            q = qmath.to_groups(quantize_like_inference(w, scheme, clip=factor), group_size)
            err = (torch.einsum("tgk,ogk->tog", x_groups, q) - reference).pow(2).mean(dim=0)
            if best_err is None:
                best_err = err
                continue
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_factor[start:start + row_chunk] = torch.where(better, factor, best_factor[start:start + row_chunk])
    return best_factor


def _strided_rows(rows: torch.Tensor, max_tokens: int) -> torch.Tensor:
    step = max(1, rows.shape[0] // max_tokens)
    return rows[::step][:max_tokens]


#: pair name -> the Linear whose input channels it scales
PAIR_LINEAR = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
#: block Linear -> the captured sub-module whose first input is that Linear's input
LINEAR_INPUT = {"attn.qkv": "attn", "attn.proj": "attn.proj", "mlp.fc1": "mlp", "mlp.fc2": "mlp.fc2"}


def _pair_plan(block: nn.Module, targets: dict, pairs: tuple[str, ...]) -> list[str]:
    """Pairs whose scaled Linear is a weight-quantized target and whose structure allows folding."""
    plan = []
    for pair in pairs:
        linear = PAIR_LINEAR[pair]
        if linear not in targets or not targets[linear].scheme.quantizes_weights:
            continue
        if pair == "qkv":
            check_norm(block.norm1, "norm1")
        elif pair == "fc1":
            check_norm(block.norm2, "norm2")
        elif pair == "proj":
            v_rows(block.attn)
        plan.append(pair)
    return plan


def _fold(block: nn.Module, pair: str, scale: torch.Tensor) -> None:
    if pair == "qkv":
        fold_norm_into_linear_(block.norm1, block.attn.qkv, scale)
    elif pair == "proj":
        fold_v_into_proj_(block.attn, scale)
    elif pair == "fc1":
        fold_norm_into_linear_(block.norm2, block.mlp.fc1, scale)
    else:
        fold_act_into_linear_(block.mlp, scale)


@register_method("awq")
class AWQ(PTQMethod):
    display_name = "AWQ"
    folds_channel_scales = True
    supports_activation_quant = False
    needs_block_inputs = True
    options = AWQOptions

    def check_config(self, qconfig: QuantConfig, options: AWQOptions) -> None:
        super().check_config(qconfig, options)
        for part, scheme in (("encoder", qconfig.encoder), ("predictor", qconfig.predictor)):
            if scheme.w_observer != "minmax":
                raise QuantConfigError(f"AWQ searches with the minmax weight quantizer; {part} w_observer must be 'minmax'")

    def transform(self, model: nn.Module, qconfig: QuantConfig, calib: CalibrationData, options: AWQOptions) -> MethodResult:
        report: dict[str, dict] = {}
        clip_ratios: dict[str, WeightQParams] = {}
        device = model_device(model)
        for part, calls in calib.block_inputs.items():
            calls = split_calls([c.to(device) for c in calls], options.batch_size)
            targets_by_block = block_targets(model, qconfig, part)
            for index, block in enumerate(model.get_submodule(f"{part}.blocks")):
                targets = targets_by_block.get(index, {})
                if not targets:
                    calls = run_block(block, calls)
                    continue
                # The next block's inputs come from this block before it changes (AWQ's choice).
                calls, captured = run_and_capture(block, calls, sorted(set(LINEAR_INPUT.values())))
                report[f"{part}.blocks.{index}"] = self._process_block(block, targets, captured, options, clip_ratios)
        return MethodResult(weight_qparams=clip_ratios, report=report)

    def _process_block(self, block: nn.Module, targets: dict, captured: dict[str, Captured], options: AWQOptions,
                       clip_ratios: dict[str, WeightQParams]) -> dict:
        inspect = {
            "qkv": lambda: [block.attn(*a, **k) for a, k in zip(captured["attn"].args, captured["attn"].kwargs)],
            "proj": lambda: [block.attn.proj(x) for x in captured["attn.proj"].inputs()],
            "fc1": lambda: [block.mlp(x) for x in captured["mlp"].inputs()],
            "fc2": lambda: [block.mlp.fc2(x) for x in captured["mlp.fc2"].inputs()],
        }
        layer_inputs = {linear: captured[source].rows() for linear, source in LINEAR_INPUT.items()}
        result: dict[str, dict] = {}
        for pair in _pair_plan(block, targets, options.pairs):
            name = PAIR_LINEAR[pair]
            linear = block.get_submodule(name)
            act_mean = layer_inputs[name].abs().double().mean(dim=0).to(linear.weight.dtype)
            scale, result[pair] = search_scale(inspect[pair], [(linear, targets[name].scheme)], act_mean, options.n_grid)
            _fold(block, pair, scale)
            # Exact equivalence: the other searches see the same function; this Linear's input is x / s.
            layer_inputs[name] = layer_inputs[name] / scale
        if options.clip:
            factors = [1.0 - i / options.clip_grid for i in range(int(options.max_shrink * options.clip_grid))] or [1.0]
            for name, target in targets.items():
                if not target.scheme.quantizes_weights or name not in layer_inputs:
                    continue
                weight = block.get_submodule(name).weight.detach()
                rows = _strided_rows(layer_inputs[name], options.clip_max_tokens).to(weight.dtype)
                if name == "attn.qkv" and not options.clip_qk:
                    # only V's rows are searched; q and k keep their full range (ratio 1), as in llm-awq
                    searched = v_rows(block.attn)
                    best = torch.ones(weight.shape[0], qmath.num_groups(weight.shape[1], target.scheme.w_group_size),
                                      dtype=weight.dtype, device=weight.device)
                    best[searched] = search_clip(weight[searched], rows, target.scheme, factors)
                else:
                    best = search_clip(weight, rows, target.scheme, factors)
                clip_ratios[target.name] = WeightQParams(clip_max=best, clip_min=best)
                result.setdefault("clip", {})[name] = float(best.double().mean())
        return result
