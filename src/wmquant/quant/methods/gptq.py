"""GPTQ (beyond the study): quantize a Linear column by column, feeding each column's rounding
error back into the columns not yet quantized, weighted by the inverse Hessian of the layer's
output error, H = 2 X^T X / n over calibration inputs X.

Per block, the Hessians are accumulated from the block's inputs as they arrive through the
already-quantized previous blocks; then every weight-quantized Linear of the block is quantized,
and the block's output with quantized weights becomes the next block's input.

Details: dead inputs (H_jj = 0) get H_jj = 1 and zero weights; damping adds damp * mean(diag H);
the upper Cholesky factor of H^-1 drives the updates; columns go in lazy batches of `block_size`
with one matrix update per batch; a group's scale and zero point are computed from the group's
current (error-updated) weights when its first column is reached. With `act_order` the columns go
by decreasing H_jj and the group qparams are computed up front from the original weights (groups
stay contiguous in the input dimension, as the weight quantizer requires).
The integer codes are converted back with the stored scale in the weight's dtype and the scales
are handed to the weight quantizer, so quantize_ reproduces GPTQ's weights exactly. Other targets
(patch embedding, action/proprio encoders) are left to plain minmax rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import qmath
from ..recorders import CalibrationData, layer_input_rows
from ..config import QuantConfig, QuantScheme
from ..hooks import ForwardHooks
from ..layers import WeightQParams
from ._blockwise import block_targets, model_device, run_block, split_calls
from .base import check_choice, MethodResult, PTQMethod, QuantConfigError, check_positive, register_method


@dataclass
class GPTQOptions:
    block_size: int = 128
    damp: float = 0.01
    act_order: bool = False
    # where a group's scale comes from, without act-order: "block_start" = the weights as they were
    # when the current block of columns began (the original GPTQ: W, not its working copy W1);
    # "updated" = the weights after this block's earlier columns fed their error back (wmquant 0.1)
    group_params: str = "block_start"
    n_samples: int = 128
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive(self, "block_size", "damp", "n_samples", "batch_size")
        if not isinstance(self.act_order, bool):
            raise QuantConfigError(f"GPTQ act_order={self.act_order!r} must be true or false")
        check_choice(self, "group_params", ("block_start", "updated"))


def _group_qparams(w: torch.Tensor, scheme: QuantScheme, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Minmax (scale, zero) of a (out, cols) slice treated as one group, in the weight dtype."""
    scale, zero = qmath.weight_qparams(w.to(dtype), scheme.w_bits, None, scheme.w_symmetric,
                                       quantwm_scale=scheme.minmax_quantwm_scale)
    return scale[:, 0], zero[:, 0]


@torch.no_grad()
def gptq_quantize(weight: torch.Tensor, gram: torch.Tensor, rows: int, scheme: QuantScheme,
                  options: GPTQOptions) -> tuple[torch.Tensor, WeightQParams]:
    """GPTQ of W[out, in] given H-proportional `gram` = sum_t x_t x_t^T over `rows` inputs.

    Returns the dequantized weight (weight's dtype) and its (out, n_groups) scale / zero point.
    """
    dtype = weight.dtype
    out_features, in_features = weight.shape
    sizes = qmath.group_sizes(in_features, scheme.w_group_size)
    width = sizes[0]
    n_groups = len(sizes)
    w = weight.detach().double().clone()
    hessian = (2.0 / max(rows, 1)) * gram.double().to(w.device).clone()
    dead = torch.diagonal(hessian) == 0
    hessian[dead, dead] = 1.0
    w[:, dead] = 0.0

    order = torch.argsort(torch.diagonal(hessian), descending=True) if options.act_order else torch.arange(in_features, device=w.device)
    w = w[:, order]
    hessian = hessian[order][:, order]
    hessian += options.damp * torch.diagonal(hessian).mean() * torch.eye(in_features, dtype=hessian.dtype, device=w.device)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hessian)), upper=True)

    scale = torch.empty(out_features, n_groups, dtype=dtype, device=w.device)
    zero = torch.empty_like(scale)
    static = options.act_order or n_groups == 1
    if static:
        original = weight.detach().double().clone()
        original[:, dead] = 0.0
        for g in range(n_groups):
            scale[:, g], zero[:, g] = _group_qparams(original[:, g * width: g * width + sizes[g]], scheme, dtype)
    codes = torch.empty(out_features, in_features, dtype=torch.float64, device=w.device)

    for start in range(0, in_features, options.block_size):
        end = min(start + options.block_size, in_features)
        w_block = w[:, start:end].clone()
        errors = torch.zeros_like(w_block)
        hinv_block = hinv[start:end, start:end]
        for i in range(end - start):
            column = int(order[start + i])
            group = column // width
            if not static and column % width == 0:
                if options.group_params == "block_start":
                    current = w[:, start + i: start + i + sizes[group]]
                else:
                    current = torch.cat([w_block[:, i:], w[:, end:]], dim=1)[:, :sizes[group]]
                scale[:, group], zero[:, group] = _group_qparams(current, scheme, dtype)
            s, z = scale[:, group].double(), zero[:, group].double()
            q = qmath.quantize(w_block[:, i], s, z, scheme.w_bits, scheme.w_symmetric)
            codes[:, column] = q
            error = (w_block[:, i] - qmath.dequantize(q, s, z)) / hinv_block[i, i]
            w_block[:, i:] -= error[:, None] * hinv_block[i, i:][None, :]
            errors[:, i] = error
        w[:, end:] -= errors @ hinv[start:end, end:]

    column_group = torch.arange(in_features, device=w.device) // width
    dequantized = qmath.dequantize(codes.to(dtype), scale[:, column_group], zero[:, column_group])
    return dequantized, WeightQParams(scale=scale, zero_point=zero)


class _GramHooks(ForwardHooks):
    """Accumulate sum_t x_t x_t^T of the inputs of the named Linears of a block, in float64 from
    the start (the Hessian that GPTQ inverts)."""

    def __init__(self, block: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.grams: dict[str, torch.Tensor] = {}
        self.rows = {name: 0 for name in names}
        self._handles += [block.get_submodule(n).register_forward_pre_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = layer_input_rows(module, args[0]).double()
            gram = x.T @ x
            self.grams[name] = self.grams[name] + gram if name in self.grams else gram
            self.rows[name] += x.shape[0]
        return hook


@register_method("gptq")
class GPTQ(PTQMethod):
    display_name = "GPTQ"
    finalizes_weights = True
    # GPTQ sets the weights; quantized activations are rounded to nearest (RTN), as QuaRot pairs them
    needs_block_inputs = True
    options = GPTQOptions

    def transform(self, model: nn.Module, qconfig: QuantConfig, calib: CalibrationData, options: GPTQOptions) -> MethodResult:
        device = model_device(model)
        qparams: dict[str, WeightQParams] = {}
        report: dict[str, dict] = {}
        for part, calls in calib.block_inputs.items():
            calls = split_calls([c.to(device) for c in calls], options.batch_size)
            targets_by_block = block_targets(model, qconfig, part)
            for index, block in enumerate(model.get_submodule(f"{part}.blocks")):
                targets = {n: t for n, t in targets_by_block.get(index, {}).items() if t.scheme.quantizes_weights}
                if targets:
                    hooks = _GramHooks(block, list(targets))
                    try:
                        run_block(block, calls)
                    finally:
                        hooks.remove()
                    for name, target in targets.items():
                        layer = block.get_submodule(name)
                        dequantized, qparams[target.name] = gptq_quantize(
                            layer.weight, hooks.grams[name], hooks.rows[name], target.scheme, options)
                        with torch.no_grad():
                            report[target.name] = {
                                "weight_change_rms": float((dequantized - layer.weight).double().pow(2).mean().sqrt())}
                            layer.weight.copy_(dequantized)
                calls = run_block(block, calls)
        return MethodResult(weight_qparams=qparams, report=report)
