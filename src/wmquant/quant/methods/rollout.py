"""Rollout-aware calibration (`method=rollout`): quantization parameters learned so that the
quantized world model's multi-step rollouts, and its costs of candidate plans, match FP's.

Every method of the study calibrates one layer or one block at a time against a one-step output
error. The planner instead encodes the observation and the goal, rolls the predictor out over its
horizon on its own outputs, and ranks candidate plans by their final latent. This method learns,
for every quantized layer (Linear or Conv) that a replay of the recorded planning rollouts runs
through,

* weight clipping as in OmniQuant's LWC: per (row, group) factors sigmoid(u), sigmoid(l) on the
  group's max and min (initialised at 4.0: 0.982);
* with `activation_ranges=true` (default), the static range of every integer per-tensor input:
  factors sigmoid(u), sigmoid(l) on the max and min of that input over the float replay,
  initialised at OMSE's MSE-optimal common factor (at most 0.982). The calibration's observing
  pass later applies the learned factors to the range it observes (`ActRangeClip`);
* with `let=true`, OmniQuant's LET on every replayed LayerNorm -> qkv / fc1 pair whose weights and
  activations are quantized: a per-channel scale and shift between the norm and the Linear,
  initialised at SmoothQuant's migration of the channel half-ranges and at the channel midpoints
  (measured on the float replay), and folded into the float norm and Linear afterwards (exact);

by minimising, over the planning rollouts recorded during calibration (the CEM's own action
sequences from the calibration episodes' start observations),

    L = sum_t ||z_q(t) - z_fp(t)||^2 / sum_t ||z_fp(t)||^2            (every step of the horizon)
      + cost_weight * mean_i (c_q,i - c_fp,i)^2 / mean_i c_fp,i^2,    c_i = ||z_T,i - g||^2,
      + encoder_weight * ||E_q(x) - E_fp(x)||^2 / ||E_fp(x)||^2       (recorded frames x),

with the activations fake-quantized as at inference (per-token exactly; per-tensor on the
learned static range, or, with `activation_ranges=false`, on each batch's own range as
OmniQuant's training does), rounding passed straight through. At W4A4 per-tensor the static
range is what fails on Wall (per-token activations keep far more success, docs/study_wall.md),
and weight clipping alone cannot reach it. g is the float model's final latent of the group's first
sequence (the CEM mean's prediction; the goal is not an input of the world model), so the cost
term asks the quantized model to rank a group's candidate plans as FP does. With
`cost_term=centered` the cost term is instead mean_i (d_i - mean_j d_j)^2 / s, d_i = c_q,i - c_fp,i:
a shift common to a group's costs changes no ranking and is not penalised, and s, FP's cost
variance averaged over the groups, weighs the groups by how much FP's costs spread in them.

With `encoder=true` (default) a replay starts from the quantized model's own encoding of the
recorded start observations, so the encoder's and the proprio embedding's layers are learned
too, and the third term (over the frames the planners encoded during calibration: goals and
observations) keeps the encoder's latents. Without recorded observations, or with
`encoder=false`, a replay starts from the recorded FP latents: the predictor's and the action
embedding's layers are learned, the encoder keeps minmax ranges (RTN), and the third term drops.

Optimiser: Adam, `epochs` passes over the recorded groups, lr 5e-3; the parameters of the epoch
with the lowest loss over all recorded groups are kept (`keep_best`; false keeps the last epoch's).
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import torch
import torch.nn.utils.parametrize as parametrize
from torch import nn

from ...errors import QuantizationError
from .. import qmath
from ..config import QuantConfig, QuantConfigError
from ..layers import ActQuantizer, ActRangeClip, WeightQParams, input_fake_quant_hook, input_hook
from ..recorders import CalibrationData
from ._equivalence import NORM_LINEAR_PAIRS, SCALE_FLOOR, check_norm, fold_norm_into_linear_, smoothquant_scale
from ._rollouts import COST_TERMS, RolloutReplay
from .omniquant import InputMidpoints
from .base import (MethodResult, PTQMethod, check_choice, check_non_negative, check_positive, progress_bar,
                   register_method)


@dataclass
class RolloutOptions:
    epochs: int = 10
    lr: float = 5e-3
    cost_weight: float = 1.0
    cost_term: str = "relative"  # the cost error: relative per group, or centered (see _rollouts.rollout_loss)
    encoder: bool = True         # replay from the recorded observations: learn the encoder's clipping too
    encoder_weight: float = 1.0  # weight of the recorded frames' encoder latent error
    activation_ranges: bool = True  # learn each static per-tensor input range (clip factors on it)
    let: bool = False  # learn OmniQuant's LET on every replayed LayerNorm -> qkv / fc1 pair, then fold it
    lwc_init: float = 4.0
    keep_best: bool = True  # keep the epoch with the lowest loss over all recorded groups (or the last)
    n_sequences: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0:
            raise QuantConfigError(f"rollout epochs={self.epochs!r} must be an integer >= 0")
        check_positive(self, "lr", "n_sequences")
        if not isinstance(self.keep_best, bool):
            raise QuantConfigError(f"rollout keep_best={self.keep_best!r} must be true or false")
        for name in ("encoder", "activation_ranges", "let"):
            if not isinstance(getattr(self, name), bool):
                raise QuantConfigError(f"rollout {name}={getattr(self, name)!r} must be true or false")
        check_non_negative(self, "cost_weight", "encoder_weight")
        check_choice(self, "cost_term", COST_TERMS)


class _ClippedWeight(nn.Module):
    """A parametrization: the weight fake-quantized with learnable clip factors (straight-through)."""

    def __init__(self, scheme, weight: torch.Tensor, init: float) -> None:
        super().__init__()
        self.scheme = scheme
        rows, cols = qmath.as_2d_weight(weight).shape  # a Conv's weight as (out, in * kernel), as WeightQuantizer
        shape = (rows, qmath.num_groups(cols, scheme.w_group_size))
        self.up = nn.Parameter(torch.full(shape, init, dtype=weight.dtype, device=weight.device))
        self.low = nn.Parameter(torch.full(shape, init, dtype=weight.dtype, device=weight.device))

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.sigmoid(self.up), torch.sigmoid(self.low)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        clip_max, clip_min = self.factors()
        s = self.scheme
        return qmath.fake_quantize_weight(qmath.as_2d_weight(weight), s.w_bits, s.w_group_size, s.w_symmetric,
                                          clip_max=clip_max, clip_min=clip_min, quantwm_scale=s.minmax_quantwm_scale,
                                          ste=True).reshape(weight.shape)


class _LearnedInputRange(nn.Module):
    """A layer input's static per-tensor range, as its ActQuantizer will hold it: first observed
    on the float replay by an OMSE observer (min, max and a uniform sample of the values), then
    learned as clip factors sigmoid(low), sigmoid(up) on the observed min and max, initialised at
    the MSE-optimal common factor (OMSE's activation search) but no higher than sigmoid(max_logit).
    Rounding passes its gradient straight through; the range gets LSQ-like gradients through the
    scale."""

    def __init__(self, scheme, seed: int) -> None:
        super().__init__()
        self.scheme = scheme
        self.low = nn.Parameter(torch.zeros(()))
        self.up = nn.Parameter(torch.zeros(()))
        self.observer = ActQuantizer(scheme.a_bits, symmetric=scheme.a_symmetric, observer="omse", seed=seed)
        self.observer.set_mode("observe")
        self.initial_factor: float | None = None

    def start_learning(self, max_logit: float) -> None:
        """Set the initial clip factors from what was observed, and quantize from now on."""
        seen, s = self.observer, self.scheme
        self.initial_factor = qmath.search_activation_shrink(seen.sample, seen.running_min, seen.running_max,
                                                             s.a_bits, s.a_symmetric)
        factor = min(self.initial_factor, 1 / (1 + math.exp(-max_logit)))
        with torch.no_grad():
            for parameter in (self.low, self.up):
                parameter.fill_(math.log(factor / (1 - factor)))
        seen.set_mode("off")

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.sigmoid(self.low), torch.sigmoid(self.up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = self.observer
        if seen.mode == "observe":
            return seen(x)
        clip_min, clip_max = self.factors()
        s = self.scheme
        scale, zero_point = qmath.qparams_from_range((seen.running_min * clip_min).to(x.dtype),
                                                     (seen.running_max * clip_max).to(x.dtype),
                                                     s.a_bits, s.a_symmetric, ste=True)
        return qmath.fake_quantize(x, scale, zero_point, s.a_bits, s.a_symmetric, ste=True)


class _LearnedEquivalence(nn.Module):
    """OmniQuant's LET on a LayerNorm -> Linear pair, learned through the replay: a per-channel
    scale s and shift d such that the norm outputs (x - d) / s and the Linear computes
    (W diag(s)) x~ + (b + W d), the float function unchanged. Initialised as OmniQuant starts:
    d at the channels' midpoints and s at SmoothQuant's migration (alpha 0.5) of the shifted
    channels' half-ranges, both measured on the float replay."""

    INIT_ALPHA = 0.5

    def __init__(self, model: nn.Module, norm_name: str, linear_name: str, channel_min: torch.Tensor,
                 channel_max: torch.Tensor) -> None:
        super().__init__()
        self.norm_name = norm_name
        norm, linear = model.get_submodule(norm_name), model.get_submodule(linear_name)
        self.norm, self.linear = [norm], [linear]  # in lists: not submodules of this module
        self.float_weight = linear.weight.detach().clone()
        self.shift = nn.Parameter(((channel_max + channel_min) / 2).detach().clone())
        half_range = ((channel_max - channel_min) / 2).detach()
        self.scale = nn.Parameter(smoothquant_scale(half_range, self.float_weight, self.INIT_ALPHA))
        self.initial_scale = self.scale.detach().clone()
        self.created_bias = linear.bias is None
        if self.created_bias:  # the shift moves into the Linear's bias, as OmniQuant's fold does
            linear.bias = nn.Parameter(torch.zeros_like(self.float_weight[:, 0]), requires_grad=False)

    def channel_scale(self) -> torch.Tensor:
        return self.scale.clamp(min=SCALE_FLOOR)

    def attach(self) -> None:
        """Parametrize the norm's affine and the Linear's weight and bias: the float function stays."""
        norm, linear = self.norm[0], self.linear[0]
        for module, name, transform in ((norm, "weight", _LetNormWeight(self)), (norm, "bias", _LetNormBias(self)),
                                        (linear, "weight", _LetWeight(self)), (linear, "bias", _LetBias(self))):
            parametrize.register_parametrization(module, name, transform, unsafe=True)

    def detach_from_model(self, fold: bool) -> None:
        """Remove the parametrizations (the float tensors come back) and fold the learned s, d
        into them when `fold`, else drop a bias this made."""
        norm, linear = self.norm[0], self.linear[0]
        for module, name in ((norm, "weight"), (norm, "bias"), (linear, "weight"), (linear, "bias")):
            if parametrize.is_parametrized(module, name):
                parametrize.remove_parametrizations(module, name, leave_parametrized=False)
        if fold:
            fold_norm_into_linear_(norm, linear, self.channel_scale().detach(), self.shift.detach())
        elif self.created_bias:
            linear.bias = None


class _LetParametrization(nn.Module):
    """A tensor of the pair as the learned equivalence makes it (the equivalence in a list: its
    parameters are the optimiser's, not the model's)."""

    def __init__(self, equivalence: _LearnedEquivalence) -> None:
        super().__init__()
        self.equivalence = [equivalence]


class _LetNormWeight(_LetParametrization):
    def forward(self, gamma: torch.Tensor) -> torch.Tensor:
        return gamma / self.equivalence[0].channel_scale()


class _LetNormBias(_LetParametrization):
    def forward(self, beta: torch.Tensor) -> torch.Tensor:
        equivalence = self.equivalence[0]
        return (beta - equivalence.shift) / equivalence.channel_scale()


class _LetWeight(_LetParametrization):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.equivalence[0].channel_scale()


class _LetBias(_LetParametrization):
    def forward(self, bias: torch.Tensor) -> torch.Tensor:
        equivalence = self.equivalence[0]
        return bias + equivalence.float_weight @ equivalence.shift


def _let_pairs(model: nn.Module, targets) -> list[tuple[str, str]]:
    """(norm, Linear) names of the LayerNorm -> qkv / fc1 pairs among the targets whose weights and
    activations are both quantized (LET moves difficulty between the two)."""
    pairs = []
    for target in targets:
        for norm_name, linear_suffix in NORM_LINEAR_PAIRS:
            if target.name.endswith("." + linear_suffix) and target.scheme.quantizes_weights \
                    and target.scheme.quantizes_activations:
                norm = target.name[: -len(linear_suffix)] + norm_name
                check_norm(model.get_submodule(norm), norm)
                pairs.append((norm, target.name))
    return pairs


def _learns_input_range(scheme) -> bool:
    return scheme.quantizes_activations and scheme.a_granularity == "per_tensor" and scheme.a_format == "int"


@register_method("rollout")
class RolloutAware(PTQMethod):
    display_name = "Rollout"
    needs_rollouts = True
    options = RolloutOptions

    def folds_scales(self, options: RolloutOptions) -> bool:
        return options.let

    def check_config(self, qconfig: QuantConfig, options: RolloutOptions) -> None:
        super().check_config(qconfig, options)
        if options.let and not any(scheme.quantizes_weights and scheme.quantizes_activations
                                   for _, scheme in qconfig.named_schemes()):
            raise QuantConfigError("rollout let=true moves quantization difficulty between a Linear's inputs and its "
                                   "weights, so some part must quantize both (w_bits and a_bits below 16)")

    def transform(self, model: nn.Module, qconfig: QuantConfig, calib: CalibrationData,
                  options: RolloutOptions) -> MethodResult:
        replay = RolloutReplay.with_options(model, calib, options)
        targets, fixed = replay.split_targets(model, qconfig)
        frozen = [p for p in model.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        clips: dict[str, _ClippedWeight] = {}
        ranges: dict[str, _LearnedInputRange] = {}
        equivalences: dict[str, _LearnedEquivalence] = {}
        hooks = []
        trained = False
        try:
            if options.let:
                pairs = _let_pairs(model, targets)
                if not pairs:
                    raise QuantizationError("rollout let=true: no replayed LayerNorm -> qkv / fc1 pair has both its "
                                            "weights and its activations quantized")
                norms = {linear: norm for norm, linear in pairs}
                with InputMidpoints(model, list(norms)) as seen:  # per-channel input ranges on the float replay
                    replay.mean_loss(model)
                for linear in seen.low:
                    equivalences[linear] = _LearnedEquivalence(model, norms[linear], linear, seen.low[linear],
                                                               seen.high[linear])
                    layer = model.get_submodule(linear)
                    if equivalences[linear].created_bias and any(p is layer.weight for p in frozen):
                        frozen.append(layer.bias)  # a new bias trains like its weight once this is done
                    equivalences[linear].attach()
            if options.activation_ranges:
                for index, target in enumerate(t for t in targets if _learns_input_range(t.scheme)):
                    ranges[target.name] = _LearnedInputRange(target.scheme, options.seed + index).to(
                        next(model.parameters()))
                    learned = ranges[target.name]
                    hooks.append(target.module.register_forward_pre_hook(input_hook(lambda _, x, r=learned: r(x))))
                if ranges:
                    replay.mean_loss(model)  # the float replay (LET applied): measures every learned range's input
                    for learned in ranges.values():
                        learned.start_learning(options.lwc_init)
            for target in targets:
                layer, scheme = target.module, target.scheme
                if scheme.quantizes_weights:
                    # after a learned equivalence's W diag(s), when the layer has one (parametrizations chain)
                    clips[target.name] = _ClippedWeight(scheme, layer.weight, options.lwc_init)
                    parametrize.register_parametrization(layer, "weight", clips[target.name], unsafe=True)
                if scheme.quantizes_activations and target.name not in ranges:
                    hooks.append(layer.register_forward_pre_hook(input_fake_quant_hook(scheme)))
            history = [replay.mean_loss(model)]
            parameters = [p for module in (*clips.values(), *ranges.values()) for p in (module.up, module.low)]
            parameters += [p for equivalence in equivalences.values() for p in (equivalence.scale, equivalence.shift)]
            best, best_state = history[0], [p.detach().clone() for p in parameters]
            if parameters and options.epochs:
                optimizer = torch.optim.Adam(parameters, lr=options.lr)
                order = torch.Generator().manual_seed(options.seed)
                with progress_bar(options.epochs * len(replay.groups), "rollout") as bar:
                    bar.set_postfix(loss=f"{history[0]:.4g}")
                    for _ in range(options.epochs):
                        for index in torch.randperm(len(replay.groups), generator=order).tolist():
                            loss = replay.loss(model, index)
                            optimizer.zero_grad(set_to_none=True)
                            loss.backward()
                            optimizer.step()
                            bar.update()
                        history.append(replay.mean_loss(model))
                        bar.set_postfix(loss=f"{history[-1]:.4g}")
                        if history[-1] < best or not options.keep_best:
                            best, best_state = history[-1], [p.detach().clone() for p in parameters]
                with torch.no_grad():
                    for p, value in zip(parameters, best_state):
                        p.copy_(value)
            trained = True
        finally:
            for handle in hooks:
                handle.remove()
            for name in clips:
                parametrize.remove_parametrizations(model.get_submodule(name), "weight", leave_parametrized=False)
            for equivalence in equivalences.values():
                # folded into the float weights, which quantize_ then quantizes with the learned clipping;
                # on failure the model is left as it came
                equivalence.detach_from_model(fold=trained)
            for p in frozen:
                p.requires_grad_(True)
        qparams = {}
        for name, clip in clips.items():
            clip_max, clip_min = clip.factors()
            qparams[name] = WeightQParams(clip_max=clip_max.detach(), clip_min=clip_min.detach())
        act_clips = {}
        for name, learned in ranges.items():
            clip_min, clip_max = (float(f.detach()) for f in learned.factors())
            act_clips[name] = ActRangeClip(clip_min=clip_min, clip_max=clip_max)
        report = {"loss_by_epoch": history, "kept_loss": best if parameters else None, "layers": sorted(clips),
                  "fixed_layers": sorted(fixed),
                  "through_encoder": replay.through_encoder, "encoder_not_replayed": replay.encoder_reason,
                  "encoder_frames": 0 if replay.frames is None else int(replay.frames["visual"].shape[0]),
                  "rollout_sequences": replay.num_sequences,
                  "let": {name: {"norm": equivalence.norm_name,
                                 "scale_change": float((equivalence.channel_scale().detach() / equivalence.initial_scale)
                                                       .log().abs().mean())}
                          for name, equivalence in equivalences.items()},
                  "activation_ranges": {name: {"initial_factor": learned.initial_factor,
                                               "clip_min": act_clips[name].clip_min, "clip_max": act_clips[name].clip_max}
                                        for name, learned in ranges.items()}}
        return MethodResult(weight_qparams=qparams, act_clips=act_clips, report=report)
