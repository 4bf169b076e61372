"""OmniQuant: learnable weight clipping (LWC) and learnable equivalent transformation (LET),
trained block by block with gradient steps through a straight-through estimator.

* LWC: per (row, group) of every weight-quantized Linear, clip factors sigmoid(up) and
  sigmoid(low) (initialised at 4.0, i.e. 0.982) scale the group's max and min before the scale is
  computed. The learned factors are handed to the weight quantizer as clip ratios.
* LET: for norm1 -> attn.qkv and norm2 -> mlp.fc1, a per-channel scale s and shift d:
  LayerNorm output (x - d) / s, Linear weight W diag(s), bias b + W d (attn.qkv gets a bias
  Parameter if it has none and shifts are learned, as the fusion requires). s starts from the
  SmoothQuant formula on the `wmquant plan-act` statistics when given (alpha), else 1. d starts
  (`shift_init="midpoint"`, as OmniQuant does for LayerNorm models) at each input channel's
  (min + max) / 2 over the float calibration inputs of the block, which centres every channel's
  range on 0 before the activation quantizer sees it; `shift_init="zero"` starts it at 0.
  `let=None` (default) turns LET on only where activations are quantized, as OmniQuant's scripts
  do (weight-only runs use LWC alone); true / false force it.
* LET of the attention (`let_attention`, with qkv and proj both targets): a V scale (V rows of qkv
  / s, proj's columns * s) and a Q/K scale (Q rows / s, K rows * s). The Q/K scale only changes
  anything when the attention-matmul inputs are quantized (`attention_matmuls` targets), since Q's
  and K's rows each get their own weight scale.
* Training (per block, AdamW, weight decay `weight_decay`): loss = MSE(float block output, output
  of the block with LET applied and weights, Linear inputs and targeted attention-matmul inputs
  fake-quantized). As in OmniQuant's
  released code, the float targets of block i+1 come from the float model (float inputs through
  float blocks), while the quantized inputs propagate through the already quantized blocks.
  Static per-tensor activation ranges are not known yet while training, so each batch uses its
  own range there (per-token is exact). With `keep_best` the parameters of the epoch with the
  lowest loss over all samples are kept (the initial parameters count as epoch 0).
* Afterwards LET is fused into the float weights (an exact equivalence) and quantize_ computes the
  final grid from the fused weights and the learned clip factors.

Defaults: epochs 20 (the paper and its scripts), lwc_lr 1e-2, let_lr 5e-3, weight_decay 0 and
n_samples 128 (the released code's defaults), batch_size 1 (the paper). QuantWM ran 0 epochs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .. import qmath
from ..recorders import BlockCall, CalibrationData
from ..api import _set_submodule
from ..config import PARTS, QuantConfig, QuantScheme
from ..hooks import ForwardHooks
from ..layers import WeightQParams, input_fake_quant_hook
from ._blockwise import SquaredError, block_tap_targets, block_targets, model_device, run_block, split_calls
from ._equivalence import (
    NORM_LINEAR_PAIRS,
    SCALE_FLOOR,
    attention_let,
    check_norm,
    fold_norm_into_linear_,
    smoothquant_scale,
    transformed_linear,
    transformed_norm,
)
from .base import (MethodResult, PTQMethod, QuantConfigError, check_positive, missing_stats_error, progress_bar,
                   register_method)


SHIFT_INITS = ("midpoint", "zero")


@dataclass
class OmniQuantOptions:
    epochs: int = 20
    lwc: bool = True
    let: bool | None = None
    let_shift: bool = True
    shift_init: str = "midpoint"  # "midpoint": (min + max) / 2 per input channel, as the original; "zero"
    lwc_lr: float = 1e-2
    let_lr: float = 5e-3
    weight_decay: float = 0.0
    alpha: float = 0.5
    lwc_init: float = 4.0
    keep_best: bool = False  # the original keeps the last epoch's parameters; true keeps the best epoch's
    let_attention: bool = True  # the original's attention LETs: V -> proj and Q/K (with LET on)
    n_samples: int = 128
    batch_size: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0:
            raise QuantConfigError(f"OmniQuant epochs={self.epochs!r} must be an integer >= 0")
        check_positive(self, "lwc_lr", "let_lr", "n_samples", "batch_size")
        if not isinstance(self.weight_decay, (int, float)) or self.weight_decay < 0:
            raise QuantConfigError(f"OmniQuant weight_decay={self.weight_decay!r} must be >= 0")
        if not 0.0 <= self.alpha <= 1.0:
            raise QuantConfigError(f"OmniQuant alpha={self.alpha!r} must be in [0, 1]")
        if self.let is not None and not isinstance(self.let, bool):
            raise QuantConfigError(f"OmniQuant let={self.let!r} must be true, false or null (auto)")
        if self.shift_init not in SHIFT_INITS:
            raise QuantConfigError(f"OmniQuant shift_init={self.shift_init!r}; valid: {', '.join(SHIFT_INITS)}")
        for name in ("lwc", "let_shift", "keep_best", "let_attention"):
            if not isinstance(getattr(self, name), bool):
                raise QuantConfigError(f"OmniQuant {name}={getattr(self, name)!r} must be true or false")


class _BlockState:
    """The learnable LET / LWC tensors of one block and the forward that uses them."""

    def __init__(self, block: nn.Module, targets: dict, let_pairs: list[tuple[str, str]], lwc_names: list[str],
                 init_scales: dict[str, torch.Tensor], init_shifts: dict[str, torch.Tensor], options: OmniQuantOptions,
                 attention_let: bool = False) -> None:
        self.block = block
        self.targets = targets
        self.let_pairs = let_pairs
        self.lwc_names = lwc_names
        weight = next(block.parameters())
        self.let_params: dict[str, torch.Tensor] = {}
        self.attention_let = attention_let
        if attention_let:
            inner = block.attn.proj.in_features
            self.let_params["attn.v.scale"] = init_scales.get("attn.proj", torch.ones(inner, dtype=weight.dtype,
                                                                                      device=weight.device)
                                                               ).detach().clone().requires_grad_(True)
            self.let_params["attn.qk.scale"] = torch.ones(inner, dtype=weight.dtype, device=weight.device,
                                                          requires_grad=True)
        for _, linear in let_pairs:
            layer = block.get_submodule(linear)
            self.let_params[f"{linear}.scale"] = init_scales[linear].detach().clone().requires_grad_(True)
            if options.let_shift:
                start = init_shifts.get(linear)
                if start is None:
                    start = torch.zeros(layer.in_features, dtype=weight.dtype, device=weight.device)
                self.let_params[f"{linear}.shift"] = start.detach().to(weight.dtype).clone().requires_grad_(True)
        self.lwc_params: dict[str, torch.Tensor] = {}
        for name in lwc_names:
            layer = block.get_submodule(name)
            shape = (layer.out_features, qmath.num_groups(layer.in_features, targets[name].scheme.w_group_size))
            for end in ("up", "low"):
                self.lwc_params[f"{name}.{end}"] = torch.full(shape, options.lwc_init, dtype=weight.dtype,
                                                              device=weight.device, requires_grad=True)

    def parameters(self) -> dict[str, torch.Tensor]:
        return {**self.let_params, **self.lwc_params}

    def clip_factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.sigmoid(self.lwc_params[f"{name}.up"]), torch.sigmoid(self.lwc_params[f"{name}.low"])

    def substitutions(self, let: bool, ste: bool) -> dict[str, torch.Tensor]:
        """Block tensors for one forward: LET applied (if `let`), target weights fake-quantized."""
        block = self.block
        subs: dict[str, torch.Tensor] = {}
        weights: dict[str, torch.Tensor] = {}
        if let:
            for norm_name, linear in self.let_pairs:
                norm, layer = block.get_submodule(norm_name), block.get_submodule(linear)
                scale = self.let_params[f"{linear}.scale"].clamp(min=SCALE_FLOOR)
                shift = self.let_params.get(f"{linear}.shift")
                subs[f"{norm_name}.weight"], subs[f"{norm_name}.bias"] = transformed_norm(norm.weight, norm.bias, scale, shift)
                weights[linear], bias = transformed_linear(layer.weight, layer.bias, scale, shift)
                if bias is not None:
                    subs[f"{linear}.bias"] = bias
            if self.attention_let:
                attn = block.attn
                qkv_bias = subs.get("attn.qkv.bias", attn.qkv.bias)
                weights["attn.qkv"], qkv_bias, weights["attn.proj"] = attention_let(
                    weights.get("attn.qkv", attn.qkv.weight), qkv_bias, attn.proj.weight, attn,
                    self.let_params["attn.v.scale"].clamp(min=SCALE_FLOOR),
                    self.let_params["attn.qk.scale"].clamp(min=SCALE_FLOOR))
                if qkv_bias is not None:
                    subs["attn.qkv.bias"] = qkv_bias
        for name, target in self.targets.items():
            scheme = target.scheme
            if not scheme.quantizes_weights:
                continue
            weight = weights.get(name, block.get_submodule(name).weight)
            clip_max, clip_min = self.clip_factors(name) if name in self.lwc_names else (None, None)
            subs[f"{name}.weight"] = qmath.fake_quantize_weight(
                weight, scheme.w_bits, scheme.w_group_size, scheme.w_symmetric, clip_max=clip_max, clip_min=clip_min,
                quantwm_scale=scheme.minmax_quantwm_scale, ste=ste,
            )
        return subs

    def forward(self, call: BlockCall, let: bool = True, ste: bool = True) -> torch.Tensor:
        return functional_call(self.block, self.substitutions(let, ste), (call.x, *call.args), call.kwargs)


def _learns_let(options: OmniQuantOptions, targets: dict) -> bool:
    """LET is on where forced, else only where activations are quantized (OmniQuant's scripts)."""
    return options.let if options.let is not None else any(t.scheme.quantizes_activations for t in targets.values())


class InputMidpoints(ForwardHooks):
    """Forward pre-hooks that record, per input channel, (min + max) / 2 of the inputs of the named
    Linears of a block (OmniQuant's activation shifts), while the block runs inside the context."""

    def __init__(self, block: nn.Module, linears: list[str]) -> None:
        super().__init__()
        self.block, self.linears = block, linears
        self.low: dict[str, torch.Tensor] = {}
        self.high: dict[str, torch.Tensor] = {}

    def _hook(self, name: str):
        def record(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().flatten(0, -2)
            low, high = x.amin(dim=0), x.amax(dim=0)
            self.low[name] = torch.minimum(self.low[name], low) if name in self.low else low
            self.high[name] = torch.maximum(self.high[name], high) if name in self.high else high
        return record

    def __enter__(self) -> "InputMidpoints":
        self._handles += [self.block.get_submodule(name).register_forward_pre_hook(self._hook(name)) for name in self.linears]
        return self

    def values(self) -> dict[str, torch.Tensor]:
        return {name: (self.low[name] + self.high[name]) / 2 for name in self.low}


class _FakeQuantTap(nn.Module):
    """Stands in for a quantized attention tap while a block trains: its input fake-quantized as
    the tap's ActQuantizer will (per token, or per tensor with the call's own range), with STE."""

    def __init__(self, scheme: QuantScheme) -> None:
        super().__init__()
        self._quantize = input_fake_quant_hook(scheme)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._quantize(self, (x,))[0]


class _InputFakeQuant(ForwardHooks):
    """Fake-quantizes (with STE) what inference will quantize: the inputs of activation-quantized
    targets, through forward pre-hooks, and the quantized attention taps, each swapped for a
    `_FakeQuantTap` until `remove()`. A swapped probs tap makes the attention form its
    probabilities explicitly, as the quantized model does."""

    def __init__(self, block: nn.Module, targets: dict, taps: dict) -> None:
        super().__init__()
        for name, target in targets.items():
            if target.scheme.quantizes_activations:
                self._handles.append(block.get_submodule(name).register_forward_pre_hook(input_fake_quant_hook(target.scheme)))
        self._block = block
        self._swapped = [(name, block.get_submodule(name)) for name in taps]
        for name, target in taps.items():
            _set_submodule(block, name, _FakeQuantTap(target.scheme))

    def remove(self) -> None:
        super().remove()
        for name, original in self._swapped:
            _set_submodule(self._block, name, original)
        self._swapped.clear()


def _reconstruction(state: _BlockState, q_calls: list[BlockCall], fp_out: list[torch.Tensor],
                    let: bool = True) -> tuple[float, list[BlockCall]]:
    """(MSE against the float outputs, the quantized block's outputs as next inputs), no autograd.
    `let=False` runs the block as quantize_ will, once LET is fused into its weights."""
    error = SquaredError()
    outputs = []
    with torch.no_grad():
        for call, target in zip(q_calls, fp_out):
            out = state.forward(call, let=let, ste=False)
            error.add(out, target)
            outputs.append(call.with_x(out))
    return error.mean, outputs


@register_method("omniquant")
class OmniQuant(PTQMethod):
    display_name = "OmniQuant"
    folds_channel_scales = True
    finalizes_weights = True
    needs_block_inputs = True
    options = OmniQuantOptions

    def block_parts(self, model: nn.Module, qconfig: QuantConfig) -> tuple[str, ...]:
        return tuple(part for part in PARTS if block_targets(model, qconfig, part))

    def check_model(self, model, qconfig, options, act_stats) -> None:
        if act_stats is None or options.let is False:
            return
        for part in self.block_parts(model, qconfig):
            for index, targets in block_targets(model, qconfig, part).items():
                for _, linear in NORM_LINEAR_PAIRS:
                    key = f"{part}.blocks.{index}.{linear}"
                    if linear in targets and key not in act_stats:
                        raise missing_stats_error(key)

    def transform(self, model: nn.Module, qconfig: QuantConfig, calib: CalibrationData,
                  options: OmniQuantOptions) -> MethodResult:
        device = model_device(model)
        qparams: dict[str, WeightQParams] = {}
        report: dict[str, dict] = {}
        blocks = {part: model.get_submodule(f"{part}.blocks") for part in calib.block_inputs}
        with progress_bar(sum(len(b) for b in blocks.values()), "omniquant") as bar:
            for part, calls in calib.block_inputs.items():
                fp_calls = split_calls([c.to(device) for c in calls], options.batch_size)
                q_calls = fp_calls
                targets_by_block = block_targets(model, qconfig, part)
                taps_by_block = block_tap_targets(model, qconfig, part)
                for index, block in enumerate(blocks[part]):
                    bar.set_postfix(block=f"{part}.{index}")
                    targets = targets_by_block.get(index, {})
                    # the shift's starting point: recorded on this block's float inputs, only where it is learned
                    starts_shift = _learns_let(options, targets) and options.let_shift and options.shift_init == "midpoint"
                    let_linears = [linear for _, linear in NORM_LINEAR_PAIRS if linear in targets] if starts_shift else []
                    with InputMidpoints(block, let_linears) as midpoints:
                        fp_out = run_block(block, fp_calls)
                    if targets:
                        prefix = f"{part}.blocks.{index}"
                        q_calls, block_qparams, report[prefix] = self._process_block(
                            block, prefix, targets, taps_by_block.get(index, {}), q_calls, [c.x for c in fp_out],
                            calib.act_stats, midpoints.values(), options)
                        qparams.update(block_qparams)
                    else:
                        q_calls = run_block(block, q_calls)
                    fp_calls = fp_out
                    bar.update()
        return MethodResult(weight_qparams=qparams, report=report)

    def _process_block(self, block: nn.Module, prefix: str, targets: dict, taps: dict, q_calls: list[BlockCall],
                       fp_out: list[torch.Tensor], act_stats: Mapping[str, torch.Tensor] | None,
                       init_shifts: dict[str, torch.Tensor], options: OmniQuantOptions) -> tuple[list[BlockCall], dict, dict]:
        let = _learns_let(options, targets)
        let_pairs = [(n, l) for n, l in NORM_LINEAR_PAIRS if l in targets] if let else []
        lwc_names = [n for n, t in targets.items() if t.scheme.quantizes_weights] if options.lwc else []
        init_scales = {}
        for norm_name, linear in let_pairs:
            check_norm(block.get_submodule(norm_name), f"{prefix}.{norm_name}")
            layer = block.get_submodule(linear)
            if act_stats is not None:
                init_scales[linear] = smoothquant_scale(act_stats[f"{prefix}.{linear}"], layer.weight, options.alpha)
            else:
                init_scales[linear] = torch.ones_like(layer.weight[0])
            if options.let_shift and layer.bias is None:
                layer.bias = nn.Parameter(torch.zeros_like(layer.weight[:, 0]))
        # the attention LETs need both of the attention's Linears quantized (they move scales between them)
        attention = bool(let and options.let_attention and {"attn.qkv", "attn.proj"} <= set(targets))
        if attention and act_stats is not None and f"{prefix}.attn.proj" in act_stats:
            init_scales["attn.proj"] = smoothquant_scale(act_stats[f"{prefix}.attn.proj"], block.attn.proj.weight,
                                                         options.alpha)
        state = _BlockState(block, targets, let_pairs, lwc_names, init_scales, init_shifts, options, attention)
        hooks = _InputFakeQuant(block, targets, taps)
        frozen = [p for p in block.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            initial = best = _reconstruction(state, q_calls, fp_out)[0]
            best_params = copy.deepcopy({k: v.detach() for k, v in state.parameters().items()})
            if state.parameters() and options.epochs > 0:
                groups = [{"params": list(state.let_params.values()), "lr": options.let_lr},
                          {"params": list(state.lwc_params.values()), "lr": options.lwc_lr}]
                optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=options.weight_decay)
                for _ in range(options.epochs):
                    for call, target in zip(q_calls, fp_out):
                        loss = F.mse_loss(state.forward(call), target)
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                    current = _reconstruction(state, q_calls, fp_out)[0]
                    if current < best or not options.keep_best:
                        best = current
                        best_params = copy.deepcopy({k: v.detach() for k, v in state.parameters().items()})
            with torch.no_grad():
                for key, value in state.parameters().items():
                    value.copy_(best_params[key])
                for norm_name, linear in let_pairs:
                    scale = state.let_params[f"{linear}.scale"].clamp(min=SCALE_FLOOR)
                    fold_norm_into_linear_(block.get_submodule(norm_name), block.get_submodule(linear), scale,
                                           state.let_params.get(f"{linear}.shift"))
                if attention:
                    attn = block.attn
                    weight, bias, proj = attention_let(attn.qkv.weight, attn.qkv.bias, attn.proj.weight, attn,
                                                       state.let_params["attn.v.scale"].clamp(min=SCALE_FLOOR),
                                                       state.let_params["attn.qk.scale"].clamp(min=SCALE_FLOOR))
                    attn.qkv.weight.copy_(weight)
                    attn.proj.weight.copy_(proj)
                    if bias is not None:
                        attn.qkv.bias.copy_(bias)
                final, next_calls = _reconstruction(state, q_calls, fp_out, let=False)
        finally:
            hooks.remove()
            for p in frozen:
                p.requires_grad_(True)
        qparams = {}
        for name in lwc_names:
            clip_max, clip_min = state.clip_factors(name)
            qparams[f"{prefix}.{name}"] = WeightQParams(clip_max=clip_max.detach(), clip_min=clip_min.detach())
        report = {"initial_loss": initial, "final_loss": final, "epochs": options.epochs,
                  "let_pairs": [l for _, l in let_pairs], "lwc_layers": lwc_names}
        return next_calls, qparams, report

