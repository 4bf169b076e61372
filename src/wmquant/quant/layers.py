"""Fake-quantized modules that stand in for the float ones of an unmodified model.

* `QuantLinear`, `QuantConv1d`, `QuantConv2d` subclass the torch layers and keep the very same
  `weight` / `bias` Parameter objects, so parameter names and state-dict keys do not change
  (quantizer buffers are non-persistent). Each has an optional `input_quantizer` (ActQuantizer)
  and an optional `weight_quantizer` (WeightQuantizer).
* `ActQuantizer` replaces an attention tap or sits on a layer input. Modes: "off" (identity),
  "observe" (collect statistics, return the input unchanged), "quant". A method may give a
  static quantizer clip factors for its observed range (`ActRangeClip`: learned ranges).
* `WeightQuantizer` fake-quantizes a weight per channel or per group. Its qparams come from the
  weight as it is when used (minmax or OMSE observer, optionally with clip ratios given by a
  method), or are fixed by a method (GPTQ). The dequantized weight is cached and recomputed only
  when the weight tensor changes (tracked by its version counter), so an in-place edit of the
  weight (a later transform) can never be quantized on a stale grid.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import QuantizationError
from . import fused_fake_quant, qmath
from .config import QuantScheme


@dataclass
class WeightQParams:
    """What a method hands to a WeightQuantizer; every tensor is (out, n_groups).

    Either clip ratios (qparams are then recomputed from the weight with those ratios: OMSE,
    OmniQuant's learned clipping) or a fixed scale/zero point (GPTQ, whose weights are already on
    that grid).
    """

    clip_max: torch.Tensor | None = None
    clip_min: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    zero_point: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.scale is None and self.zero_point is not None:
            raise QuantizationError("a zero point without a scale is not a complete set of weight qparams")
        if self.scale is not None and (self.clip_max is not None or self.clip_min is not None):
            raise QuantizationError("give either clip ratios or a fixed scale, not both")


@dataclass
class ActRangeClip:
    """What a method hands to a static (per-tensor) ActQuantizer: factors on its observed range,
    which becomes [clip_min * observed min, clip_max * observed max] (and replaces the OMSE
    observer's search, as a weight's clip ratios replace its observer's)."""

    clip_min: float
    clip_max: float

    def __post_init__(self) -> None:
        for name in ("clip_min", "clip_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise QuantizationError(f"activation range clip {name}={value!r} must be in (0, 1]")


class WeightQuantizer(nn.Module):
    """Fake quantization of one weight tensor (Linear (out, in) or Conv (out, in, *k) seen as 2-D)."""

    def __init__(self, scheme: QuantScheme) -> None:
        super().__init__()
        self.bits = scheme.w_bits
        self.group_size = scheme.w_group_size
        self.symmetric = scheme.w_symmetric
        self.observer = scheme.w_observer
        self.quantwm_scale = scheme.minmax_quantwm_scale
        self.format = scheme.w_format
        self.enabled = True
        self.register_buffer("scale", None, persistent=False)
        self.register_buffer("zero_point", None, persistent=False)
        self.register_buffer("clip_max", None, persistent=False)
        self.register_buffer("clip_min", None, persistent=False)
        self.fixed_qparams = False
        self._cache_key: tuple | None = None
        self._cached: torch.Tensor | None = None

    def extra_repr(self) -> str:
        group = "per-channel" if self.group_size is None else f"group={self.group_size}"
        kind = "sym" if self.symmetric else "asym"
        return f"bits={self.bits}, {group}, {kind}, observer={self.observer}, enabled={self.enabled}"

    def load_qparams(self, qparams: WeightQParams, weight: torch.Tensor) -> None:
        """Adopt a method's clip ratios or fixed qparams; shapes are checked against `weight`."""
        rows = weight.shape[0]
        groups = qmath.num_groups(qmath.as_2d_weight(weight).shape[1], self.group_size)
        for key in ("clip_max", "clip_min", "scale", "zero_point"):
            value = getattr(qparams, key)
            if value is not None and tuple(value.shape) != (rows, groups):
                raise QuantizationError(
                    f"weight qparam {key} has shape {tuple(value.shape)}; expected {(rows, groups)} (rows, groups)"
                )
            setattr(self, key, None if value is None else value.detach().to(weight.device, weight.dtype).clone())
        self.fixed_qparams = qparams.scale is not None
        if self.fixed_qparams and self.zero_point is None:
            self.zero_point = torch.zeros_like(self.scale)
        self._cache_key = None

    def compute_qparams(self, weight2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero_point), each (out, n_groups), for the 2-D weight as it is now."""
        if self.fixed_qparams:
            return self.scale, self.zero_point
        clip_max, clip_min = self.clip_max, self.clip_min
        if clip_max is None and self.observer == "omse":
            clip_max = clip_min = qmath.search_weight_clip_ratios(
                weight2d.detach(), self.bits, self.group_size, self.symmetric, quantwm_scale=self.quantwm_scale
            )
        return qmath.weight_qparams(
            weight2d, self.bits, self.group_size, self.symmetric, clip_max, clip_min, self.quantwm_scale
        )

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """The fake-quantized weight: a constant (PTQ), so no gradient reaches the float weight;
        gradients with respect to the layer's input still flow."""
        if not self.enabled or not qmath.is_quantized(self.bits):
            return weight
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device, weight.shape)
        if self._cache_key != key or self._cached is None:
            # Outside inference mode, so the cache can later serve a forward that needs gradients.
            with torch.inference_mode(False), torch.no_grad():
                self._cached = self._fake_quantize(weight)
            self._cache_key = key
        return self._cached

    def _fake_quantize(self, weight: torch.Tensor) -> torch.Tensor:
        weight2d = qmath.as_2d_weight(weight)
        if self.format != "int":
            return qmath.format_fake_quantize_weight(weight2d, self.format).reshape(weight.shape)
        scale, zero_point = self.compute_qparams(weight2d)
        if not self.fixed_qparams:
            self.scale, self.zero_point = scale, zero_point
        deq = qmath.fake_quantize_weight(
            weight2d, self.bits, self.group_size, self.symmetric, scale=scale, zero_point=zero_point
        )
        return deq.reshape(weight.shape)

    def storage_bits(self, weight: torch.Tensor) -> int:
        rows, cols = qmath.as_2d_weight(weight).shape
        if self.format != "int":
            return qmath.format_storage_bits(rows, cols, self.format)
        return qmath.weight_storage_bits(rows, cols, self.bits, self.group_size, self.symmetric)


class ActQuantizer(nn.Module):
    """Fake quantization of an activation tensor.

    per_tensor: static; "observe" keeps the running min/max over every calibration call (and, for
    the OMSE observer, a uniform random sample of the values seen); `freeze()` turns them into
    one scale and zero point. per_token: dynamic, one scale per token (all positions but
    `channel_axis`), computed on every call; it needs no calibration. A new quantizer starts in
    "quant" if it needs no calibration, else "off".
    channel_axis: -1 for Linear inputs and attention taps, 1 for Conv inputs (b, C, ...).
    """

    MODES = ("off", "observe", "quant")

    def __init__(
        self,
        bits: int,
        symmetric: bool = False,
        granularity: str = "per_tensor",
        observer: str = "minmax",
        channel_axis: int = -1,
        sample_size: int = 1 << 16,
        seed: int = 0,
        name: str = "",
        include_zero: bool = True,
        number_format: str = "int",
    ) -> None:
        super().__init__()
        self.bits = qmath.check_bits(bits, "activation bits")
        self.include_zero = include_zero
        self.format = qmath.check_format(number_format, "activation format")
        self.symmetric = symmetric
        self.granularity = granularity
        self.observer = observer
        self.channel_axis = channel_axis
        self.sample_size = sample_size
        self.name = name
        self.mode = "off" if self.needs_calibration else "quant"
        self.calls_observed = 0
        self.values_observed = 0
        self._rng = random.Random(seed)
        self.register_buffer("running_min", None, persistent=False)
        self.register_buffer("running_max", None, persistent=False)
        self.register_buffer("scale", None, persistent=False)
        self.register_buffer("zero_point", None, persistent=False)
        self.register_buffer("sample", None, persistent=False)
        self.range_clip: ActRangeClip | None = None

    def extra_repr(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        clip = "" if self.range_clip is None else f", range clip {self.range_clip.clip_min:.3f}/{self.range_clip.clip_max:.3f}"
        return f"bits={self.bits}, {self.granularity}, {kind}, observer={self.observer}, mode={self.mode}{clip}"

    @property
    def needs_calibration(self) -> bool:
        return self.granularity == "per_tensor" and qmath.is_quantized(self.bits)

    @property
    def frozen(self) -> bool:
        return self.scale is not None

    def set_mode(self, mode: str) -> None:
        if mode not in self.MODES:
            raise QuantizationError(f"activation quantizer mode {mode!r} is unknown; valid: {', '.join(self.MODES)}")
        if mode == "quant" and self.needs_calibration and not self.frozen:
            raise QuantizationError(
                f"activation quantizer {self.name or '<unnamed>'} has no calibrated range; "
                "run calibration (observe_activations + freeze_) before switching quantization on"
            )
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "off" or not qmath.is_quantized(self.bits):
            return x
        if self.mode == "observe":
            self.observe(x)
            return x
        # Straight-through rounding: a planner that differentiates through the model (GD) still
        # gets gradients, as with torch's own fake-quantize ops; without autograd it changes nothing.
        # Where nothing needs a gradient, one fused GPU kernel gives the same bits (fused_fake_quant).
        if self.format != "int":
            moved = x.movedim(self.channel_axis, -1)
            absmax = None if self.granularity == "per_token" else self.scale  # frozen: the range's absmax
            out = qmath.format_fake_quantize_activation(moved, self.format, self.granularity == "per_token", absmax,
                                                        ste=True)
            return out.movedim(-1, self.channel_axis)
        if self.granularity == "per_token":
            moved = x.movedim(self.channel_axis, -1)
            if self.include_zero and fused_fake_quant.applies(moved):
                out = fused_fake_quant.fake_quantize_per_token(moved, self.bits, self.symmetric)
            else:
                out = qmath.per_token_fake_quantize(moved, self.bits, self.symmetric, ste=True,
                                                    include_zero=self.include_zero)
            return out.movedim(-1, self.channel_axis)
        if self.scale.numel() == 1 and fused_fake_quant.applies(x):
            return fused_fake_quant.fake_quantize_per_tensor(x, self.scale, self.zero_point, self.bits, self.symmetric)
        return qmath.fake_quantize(x, self.scale, self.zero_point, self.bits, self.symmetric, ste=True)

    def load_range_clip(self, clip: ActRangeClip) -> None:
        if not self.needs_calibration or self.format != "int":
            raise QuantizationError(f"activation quantizer {self.name or '<unnamed>'} has no static integer range to clip "
                                    f"({self.granularity}, {self.bits} bits, format {self.format})")
        self.range_clip = clip

    @torch.inference_mode(False)
    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        self.calls_observed += 1
        if not self.needs_calibration or x.numel() == 0:
            return
        x = x.detach()
        low, high = x.amin().float(), x.amax().float()
        if self.running_min is None:
            self.running_min, self.running_max = low, high
        else:
            self.running_min = torch.minimum(self.running_min, low)
            self.running_max = torch.maximum(self.running_max, high)
        if self.observer == "omse":
            self._update_sample(x.reshape(-1))
        self.values_observed += x.numel()

    def _update_sample(self, flat: torch.Tensor) -> None:
        """Keep ~sample_size values, drawn uniformly (with replacement) from everything observed."""
        seen, new = self.values_observed, flat.numel()
        keep_old = 0 if self.sample is None else round(self.sample_size * seen / (seen + new))
        take_new = self.sample_size - keep_old
        gen = torch.Generator().manual_seed(self._rng.randrange(2**62))
        parts = []
        if keep_old:
            parts.append(self.sample[torch.randint(self.sample.numel(), (keep_old,), generator=gen).to(flat.device)])
        if take_new:
            parts.append(flat[torch.randint(new, (take_new,), generator=gen).to(flat.device)].float())
        self.sample = torch.cat(parts)

    @torch.inference_mode(False)
    @torch.no_grad()
    def freeze(self) -> None:
        """Turn the observed range into a static scale and zero point (per_tensor only)."""
        if not self.needs_calibration:
            return
        if self.running_min is None:
            raise QuantizationError(
                f"activation quantizer {self.name or '<unnamed>'} saw no calibration data; "
                "the calibration run made no forward pass through this module"
            )
        if self.format != "int":
            # a float format keeps the range's absmax (its scale maps it onto the format's largest value)
            self.scale = torch.maximum(-self.running_min, self.running_max)
            self.zero_point = torch.zeros_like(self.scale)
            return
        if self.range_clip is not None:
            scale, zero_point = qmath.qparams_from_range(self.running_min * self.range_clip.clip_min,
                                                         self.running_max * self.range_clip.clip_max,
                                                         self.bits, self.symmetric)
        elif self.observer == "omse":
            scale, zero_point = qmath.search_activation_range(
                self.sample, self.running_min, self.running_max, self.bits, self.symmetric
            )
        else:
            scale, zero_point = qmath.qparams_from_range(self.running_min, self.running_max, self.bits, self.symmetric)
        self.scale, self.zero_point = scale, zero_point


class _QuantizedWeightLayer:
    """Shared construction and bookkeeping of QuantLinear / QuantConv*."""

    input_quantizer: ActQuantizer | None
    weight_quantizer: WeightQuantizer | None

    def _attach(self, scheme: QuantScheme, name: str, channel_axis: int) -> None:
        self.scheme = scheme
        self.input_quantizer = None
        self.weight_quantizer = None
        if scheme.quantizes_activations:
            self.input_quantizer = make_act_quantizer(scheme, f"{name}.input_quantizer", channel_axis)
        if scheme.quantizes_weights:
            self.weight_quantizer = WeightQuantizer(scheme)

    def _quantized_operands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        weight = self.weight if self.weight_quantizer is None else self.weight_quantizer(self.weight)
        return x, weight


def input_hook(quantize: Callable[[nn.Module, torch.Tensor], torch.Tensor]):
    """A forward pre-hook that applies `quantize(layer, x)` to a layer's input where its quantized
    version's input quantizer will act, for methods that train or measure before the model is
    quantized. A layer with an input rotation R (method rotate) quantizes x R, as its QuantLinear
    will; the hook hands the layer (x R)_q R^T, which the layer rotates back to (x R)_q (R is
    orthogonal)."""

    def hook(module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        rotation = getattr(module, "input_rotation", None)
        if rotation is not None:
            x = x @ rotation.to(x.dtype)
        x = quantize(module, x)
        if rotation is not None:
            x = x @ rotation.to(x.dtype).T
        return (x,) + tuple(args[1:])

    return hook


def input_fake_quant_hook(scheme: QuantScheme, bits: int | None = None):
    """An `input_hook` that fake-quantizes as `scheme` would (at `bits`, default the scheme's):
    per-token exactly, a static per-tensor range taken from each call's own input (the calibrated
    range does not exist yet); rounding passes its gradient straight through."""
    bits = scheme.a_bits if bits is None else bits

    def quantize(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if scheme.a_granularity != "per_token":
            return qmath.per_tensor_fake_quantize(x, bits, scheme.a_symmetric, ste=True)
        axis = 1 if isinstance(module, (nn.Conv1d, nn.Conv2d)) else -1  # a Conv's tokens: its input channels
        return qmath.per_token_fake_quantize(x.movedim(axis, -1), bits, scheme.a_symmetric, ste=True,
                                             include_zero=scheme.a_include_zero).movedim(-1, axis)

    return input_hook(quantize)


def make_act_quantizer(scheme: QuantScheme, name: str, channel_axis: int = -1) -> ActQuantizer:
    return ActQuantizer(
        scheme.a_bits,
        symmetric=scheme.a_symmetric,
        granularity=scheme.a_granularity,
        observer=scheme.a_observer,
        channel_axis=channel_axis,
        name=name,
        include_zero=scheme.a_include_zero,
        number_format=scheme.a_format,
    )


def _adopt_parameters(new: nn.Module, old: nn.Module) -> None:
    """Give `new` the very same Parameter objects (and training flag) as `old`."""
    new.weight = old.weight
    new.bias = old.bias
    new.train(old.training)


class QuantLinear(nn.Linear, _QuantizedWeightLayer):
    """nn.Linear with fake-quantized input and weight; same parameter names as nn.Linear."""

    @classmethod
    def from_float(cls, linear: nn.Linear, scheme: QuantScheme, name: str) -> "QuantLinear":
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        _adopt_parameters(new, linear)
        new._attach(scheme, name, channel_axis=-1)
        # a rotation method's online input rotation (methods/rotate.py) stays in front of the quantizer
        new.register_buffer("input_rotation", getattr(linear, "input_rotation", None))
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rotation = getattr(self, "input_rotation", None)
        if rotation is not None:
            x = x @ rotation.to(x.dtype)
        x, weight = self._quantized_operands(x)
        return F.linear(x, weight, self.bias)


def _conv_kwargs(conv: nn.Module) -> dict:
    return dict(
        in_channels=conv.in_channels,
        out_channels=conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )


class _QuantConvMixin(_QuantizedWeightLayer):
    @classmethod
    def from_float(cls, conv: nn.Module, scheme: QuantScheme, name: str):
        new = cls(**_conv_kwargs(conv), device="meta")
        _adopt_parameters(new, conv)
        new._attach(scheme, name, channel_axis=1)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, weight = self._quantized_operands(x)
        return self._conv_forward(x, weight, self.bias)


class QuantConv1d(_QuantConvMixin, nn.Conv1d):
    """nn.Conv1d with fake-quantized input (per token = per position) and weight (rows = out channels)."""


class QuantConv2d(_QuantConvMixin, nn.Conv2d):
    """nn.Conv2d with fake-quantized input and weight; the weight is quantized as (out, in * kh * kw)."""


QUANTIZED_LAYER_TYPES = (QuantLinear, QuantConv1d, QuantConv2d)


def quantized_version(module: nn.Module) -> type | None:
    """The quantized class for a float layer, or None if wmquant cannot quantize it."""
    if isinstance(module, QUANTIZED_LAYER_TYPES):
        return None
    if isinstance(module, nn.Linear):
        return QuantLinear
    if isinstance(module, nn.Conv2d):
        return QuantConv2d
    if isinstance(module, nn.Conv1d):
        return QuantConv1d
    return None
