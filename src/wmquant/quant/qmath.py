"""All quantization arithmetic of wmquant: rounding, clamping, scales, zero points, granularity.

Uniform affine fake quantization. A real value x becomes the integer

    q = clamp(round(x / scale) + zero_point, qmin, qmax)

and is read back as x_hat = (q - zero_point) * scale. `round` is round-half-to-even (torch.round),
and the zero point is added *after* rounding, so it is always an exact integer offset.

* Symmetric (signed, the default for weights): q in [-2^(b-1), 2^(b-1) - 1], zero_point = 0,
  scale = absmax / (2^(b-1) - 1), so both +absmax and -absmax are representable.
* Asymmetric (unsigned, the default for activations): q in [0, 2^b - 1],
  scale = (max - min) / (2^b - 1), zero_point = clamp(round(-min / scale), 0, 2^b - 1).
  The range is first widened to contain 0 (min <= 0 <= max), so 0 is always exactly representable
  (it is q = zero_point) and the clamp of the zero point never bites.
* Every scale is kept >= SCALE_EPS, so an all-zero group quantizes to exact zeros instead of NaN.
* 16 bits means "not quantized": every entry point returns its input unchanged.

Granularity. A weight W[out, in] is quantized per output channel (one scale per row) or per group
of G consecutive inputs within a row. Groups never straddle rows: when G does not divide `in`, the
last group of each row is shorter (in=404, G=128 -> groups of 128, 128, 128, 20). Internally a row
is zero-padded to a whole number of groups; padding zeros change neither absmax nor the widened
[min, max] range, and quantize to exact zeros, so they never influence a result.
Activations are quantized per tensor (one scale, calibrated, static) or per token (one scale per
row of the last axis, computed on the fly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch

from ..errors import QuantizationError

#: Bit widths that quantize; OFF_BITS means "leave in floating point".
QUANT_BITS = (2, 3, 4, 5, 6, 7, 8)
OFF_BITS = 16
#: Smallest scale ever used; guards all-zero groups and constant tensors.
SCALE_EPS = 1e-8
#: Bits charged per stored scale and per stored zero point in `weight_storage_bits`.
QPARAM_BITS = 16
#: Bits charged per element of an unquantized parameter.
FLOAT_BITS = 32


# --------------------------------------------------------------------------------------------
# validation


def check_bits(bits: object, what: str = "bits") -> int:
    """Return `bits` if it is 2..8 or 16 (off); raise QuantizationError otherwise."""
    if isinstance(bits, bool) or not isinstance(bits, int) or (bits not in QUANT_BITS and bits != OFF_BITS):
        raise QuantizationError(f"{what}={bits!r} is not supported; use an integer 2..8, or 16 for no quantization")
    return bits


def check_group_size(group_size: object) -> int | None:
    """Return `group_size` if it is None (per output channel) or a positive integer."""
    if group_size is None:
        return None
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
        raise QuantizationError(
            f"group size {group_size!r} is not valid; use a positive integer (e.g. 128), or None for per-channel"
        )
    return group_size


def is_quantized(bits: int) -> bool:
    return bits < OFF_BITS


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer range (qmin, qmax): signed [-2^(b-1), 2^(b-1)-1] or unsigned [0, 2^b-1]."""
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


# --------------------------------------------------------------------------------------------
# scalar arithmetic shared by every granularity


def round_half_even(x: torch.Tensor, ste: bool = False) -> torch.Tensor:
    """torch.round (half to even). With `ste`, the backward pass treats rounding as identity."""
    if ste and torch.is_grad_enabled() and x.requires_grad:
        # round(x) + 0 exactly in the forward pass (x - x.detach() is exactly zero); gradient 1.
        # Without a gradient to pass (planning under no_grad) the plain round gives the same codes:
        # quantize() adds the zero point next, which also turns round()'s -0.0 into +0.0.
        return torch.round(x).detach() + (x - x.detach())
    return torch.round(x)


def qparams_from_range(
    xmin: torch.Tensor,
    xmax: torch.Tensor,
    bits: int,
    symmetric: bool,
    quantwm_scale: bool = False,
    ste: bool = False,
    include_zero: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point (same shape as xmin/xmax) for values in [xmin, xmax].

    The range is widened to contain 0 (so that 0, e.g. padding, is exact) unless `include_zero` is
    false (asymmetric only): the scale then spans exactly [xmin, xmax] and the zero point may lie
    outside the integer range (QuantWM's per-token quantizer: z = round(-xmin / s), unclamped).

    `quantwm_scale` reproduces QuantWM's symmetric denominator (2^b - 1) / 2, which clips the
    positive extreme (to 0.933 * absmax at 4 bits); it exists only for comparisons with that code.
    Gradients flow into xmin/xmax (learnable clipping); `ste` lets them pass the zero-point rounding.
    """
    if include_zero or symmetric:
        xmin = torch.minimum(xmin, torch.zeros_like(xmin))
        xmax = torch.maximum(xmax, torch.zeros_like(xmax))
    qmin, qmax = qrange(bits, symmetric)
    if symmetric:
        absmax = torch.maximum(-xmin, xmax)
        denominator = (2**bits - 1) / 2 if quantwm_scale else qmax
        scale = (absmax / denominator).clamp(min=SCALE_EPS)
        return scale, torch.zeros_like(scale)
    scale = ((xmax - xmin) / qmax).clamp(min=SCALE_EPS)
    zero_point = round_half_even(-xmin / scale, ste=ste)
    return scale, zero_point.clamp(qmin, qmax) if include_zero else zero_point


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int, symmetric: bool,
             ste: bool = False) -> torch.Tensor:
    """Integer codes q = clamp(round(x / scale) + zero_point, qmin, qmax), in x's float dtype."""
    qmin, qmax = qrange(bits, symmetric)
    return torch.clamp(round_half_even(x / scale, ste=ste) + zero_point, qmin, qmax)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    return (q - zero_point) * scale


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int, symmetric: bool,
                  ste: bool = False) -> torch.Tensor:
    """dequantize(quantize(x)); scale and zero_point broadcast against x."""
    if not is_quantized(bits):
        return x
    return dequantize(quantize(x, scale, zero_point, bits, symmetric, ste=ste), scale, zero_point)


# --------------------------------------------------------------------------------------------
# weight granularity: per output channel, or groups of G consecutive inputs within a row


def num_groups(in_features: int, group_size: int | None) -> int:
    """Groups per row: 1 for per-channel, else ceil(in / G)."""
    if group_size is None or group_size >= in_features:
        return 1
    return math.ceil(in_features / group_size)


def group_sizes(in_features: int, group_size: int | None) -> list[int]:
    """Sizes of the groups of one row, in order; only the last one can be shorter."""
    width = effective_group_size(in_features, group_size)
    n = num_groups(in_features, group_size)
    return [width] * (n - 1) + [in_features - width * (n - 1)]


def effective_group_size(in_features: int, group_size: int | None) -> int:
    return in_features if group_size is None else min(group_size, in_features)


def to_groups(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """(out, in) -> (out, n_groups, G), each row zero-padded at its end to n_groups * G."""
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight (out, in), got shape {tuple(w.shape)}")
    out_features, in_features = w.shape
    width = effective_group_size(in_features, group_size)
    n = num_groups(in_features, group_size)
    pad = n * width - in_features
    if pad:
        w = torch.nn.functional.pad(w, (0, pad))
    return w.reshape(out_features, n, width)


def from_groups(groups: torch.Tensor, in_features: int) -> torch.Tensor:
    """Inverse of `to_groups`: (out, n_groups, G) -> (out, in), dropping the row padding."""
    return groups.reshape(groups.shape[0], -1)[:, :in_features]


def weight_qparams(
    w: torch.Tensor,
    bits: int,
    group_size: int | None,
    symmetric: bool = True,
    clip_max: torch.Tensor | None = None,
    clip_min: torch.Tensor | None = None,
    quantwm_scale: bool = False,
    ste: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point per (row, group) of W[out, in], each (out, n_groups).

    `clip_max` / `clip_min` (broadcastable to (out, n_groups), values in (0, 1]) shrink the group's
    max and min before the scale is computed: OMSE's clip ratios, AWQ/OmniQuant clipping.
    """
    groups = to_groups(w, group_size)
    gmax = groups.amax(dim=-1)
    gmin = groups.amin(dim=-1)
    if clip_max is not None:
        gmax = gmax * clip_max
    if clip_min is not None:
        gmin = gmin * clip_min
    return qparams_from_range(gmin, gmax, bits, symmetric, quantwm_scale=quantwm_scale, ste=ste)


def fake_quantize_weight(
    w: torch.Tensor,
    bits: int,
    group_size: int | None,
    symmetric: bool = True,
    scale: torch.Tensor | None = None,
    zero_point: torch.Tensor | None = None,
    clip_max: torch.Tensor | None = None,
    clip_min: torch.Tensor | None = None,
    quantwm_scale: bool = False,
    ste: bool = False,
) -> torch.Tensor:
    """Fake-quantize W[out, in] per channel or per group; minmax qparams unless scale/zero_point given.

    scale and zero_point, when given, are (out, n_groups).
    """
    if not is_quantized(bits):
        return w
    if scale is None:
        scale, zero_point = weight_qparams(w, bits, group_size, symmetric, clip_max, clip_min, quantwm_scale, ste)
    elif zero_point is None:
        zero_point = torch.zeros_like(scale)
    groups = to_groups(w, group_size)
    deq = fake_quantize(groups, scale.unsqueeze(-1), zero_point.unsqueeze(-1), bits, symmetric, ste=ste)
    return from_groups(deq, w.shape[1])


def clip_ratio_grid(start: float = 0.35, stop: float = 1.0, steps: int = 101) -> torch.Tensor:
    """Ascending candidate clip ratios; QuantWM's OMSE grid is 0.35 + i * 0.0065, i = 0..100."""
    if steps < 1 or not 0.0 < start <= stop <= 1.0:
        raise QuantizationError(f"clip ratio grid {start}..{stop} x {steps} is not valid; need 0 < start <= stop <= 1")
    return torch.linspace(start, stop, steps, dtype=torch.float64)


def search_weight_clip_ratios(
    w: torch.Tensor,
    bits: int,
    group_size: int | None,
    symmetric: bool = True,
    ratios: torch.Tensor | None = None,
    quantwm_scale: bool = False,
) -> torch.Tensor:
    """Per (row, group) clip ratio minimising the weight reconstruction SSE of that group.

    Returns (out, n_groups) ratios from `ratios` (default `clip_ratio_grid()`); on ties the smaller
    ratio wins (QuantWM's strict comparison). A ratio r clips both the group's max and min by r.
    """
    ratios = clip_ratio_grid() if ratios is None else ratios
    groups = to_groups(w, group_size)
    best_err = None
    best = torch.ones(groups.shape[:2], dtype=w.dtype, device=w.device)
    for r in ratios.tolist():
        deq = fake_quantize_weight(w, bits, group_size, symmetric, clip_max=r, clip_min=r, quantwm_scale=quantwm_scale)
        err = (to_groups(deq, group_size) - groups).pow(2).sum(dim=-1)
        if best_err is None:
            best_err, best = err, torch.full_like(err, r)
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, torch.full_like(best, r), best)
    return best


# --------------------------------------------------------------------------------------------
# activations


def per_token_fake_quantize(x: torch.Tensor, bits: int, symmetric: bool = False, ste: bool = False,
                            include_zero: bool = True) -> torch.Tensor:
    """Dynamic quantization with one scale per row of the last axis (per token); `include_zero`
    as in `qparams_from_range`."""
    if not is_quantized(bits):
        return x
    xmin, xmax = torch.aminmax(x.detach(), dim=-1, keepdim=True)  # one pass over x for both
    scale, zero_point = qparams_from_range(xmin, xmax, bits, symmetric, include_zero=include_zero)
    return fake_quantize(x, scale, zero_point, bits, symmetric, ste=ste)


def per_tensor_fake_quantize(x: torch.Tensor, bits: int, symmetric: bool = False, ste: bool = False) -> torch.Tensor:
    """One scale from this tensor's own min/max (used where a static range is not available yet)."""
    if not is_quantized(bits):
        return x
    scale, zero_point = qparams_from_range(x.detach().amin(), x.detach().amax(), bits, symmetric)
    return fake_quantize(x, scale, zero_point, bits, symmetric, ste=ste)


def shrink_grid(steps: int = 90, step: float = 0.01) -> torch.Tensor:
    """QuantWM's activation OMSE candidates: 1.00, 0.99, ..., 0.11 (descending)."""
    return 1.0 - step * torch.arange(steps, dtype=torch.float64)


def search_activation_range(
    sample: torch.Tensor,
    xmin: torch.Tensor,
    xmax: torch.Tensor,
    bits: int,
    symmetric: bool = False,
    shrinks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor (scale, zero_point) minimising the MSE of fake-quantizing `sample`: the range
    [f xmin, f xmax] with f = `search_activation_shrink(...)`."""
    factor = search_activation_shrink(sample, xmin, xmax, bits, symmetric, shrinks)
    return qparams_from_range(xmin * factor, xmax * factor, bits, symmetric)


def search_activation_shrink(
    sample: torch.Tensor,
    xmin: torch.Tensor,
    xmax: torch.Tensor,
    bits: int,
    symmetric: bool = False,
    shrinks: torch.Tensor | None = None,
) -> float:
    """The factor f whose range [f xmin, f xmax] fake-quantizes `sample` with the least MSE.

    Candidates: 1 (plain minmax), tried first, then `shrinks` (default `shrink_grid()`); only a
    strictly better candidate replaces the best so far.
    """
    shrinks = shrink_grid() if shrinks is None else shrinks
    best, best_err = 1.0, (fake_quantize(sample, *qparams_from_range(xmin, xmax, bits, symmetric), bits, symmetric)
                           - sample).pow(2).mean()
    for factor in shrinks.tolist():
        candidate = qparams_from_range(xmin * factor, xmax * factor, bits, symmetric)
        err = (fake_quantize(sample, *candidate, bits, symmetric) - sample).pow(2).mean()
        if err < best_err:
            best, best_err = factor, err
    return best


# --------------------------------------------------------------------------------------------
# storage accounting


def weight_storage_bits(out_features: int, in_features: int, bits: int, group_size: int | None,
                        symmetric: bool) -> int:
    """Bits to store a W[out, in] tensor: b bits per weight plus, per (row, group), a 16-bit scale
    and (asymmetric only) a 16-bit zero point. An unquantized tensor (16 bits = off) is charged
    FLOAT_BITS per weight."""
    numel = out_features * in_features
    if not is_quantized(bits):
        return FLOAT_BITS * numel
    per_group = QPARAM_BITS * (1 if symmetric else 2)
    return bits * numel + per_group * out_features * num_groups(in_features, group_size)


def average_bits_per_weight(tensors: Iterable[tuple[int, int]]) -> float:
    """Average bits per parameter element over (numel, total_bits) pairs; nan for no parameters."""
    numel = total = 0
    for count, bits in tensors:
        numel += count
        total += bits
    return total / numel if numel else float("nan")


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise QuantizationError when `tensor` holds NaN or inf (a corrupt model or statistics file)."""
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise QuantizationError(f"{name} contains {bad} NaN/inf value(s); quantization needs finite values")


def as_2d_weight(weight: torch.Tensor) -> torch.Tensor:
    """Linear (out, in) as is; Conv (out, in, *kernel) -> (out, in * prod(kernel))."""
    return weight.reshape(weight.shape[0], -1)


# --------------------------------------------------------------------------------------------
# floating-point formats: FP8 (E4M3, E5M2) and microscaled 4-bit floats (MXFP4, NVFP4)

@dataclass(frozen=True)
class FloatFormat:
    """A small binary floating-point format: sign, `exponent` bits with `bias`, `mantissa` bits,
    subnormals, no infinities; values beyond `max_value` saturate to it (as FP8 kernels do)."""

    name: str
    exponent: int
    mantissa: int
    bias: int
    max_value: float

    @property
    def min_normal_exponent(self) -> int:
        return 1 - self.bias


E4M3 = FloatFormat("e4m3", exponent=4, mantissa=3, bias=7, max_value=448.0)  # OCP FP8 E4M3 (FN): 448
E5M2 = FloatFormat("e5m2", exponent=5, mantissa=2, bias=15, max_value=57344.0)
E2M1 = FloatFormat("e2m1", exponent=2, mantissa=1, bias=1, max_value=6.0)  # FP4: 0, 0.5, 1, 1.5, 2, 3, 4, 6

#: Number formats of a scheme. "int": the integer grids above (b bits, scale, zero point).
#: "fp8_e4m3" / "fp8_e5m2": 8-bit floats with one scale per row (weights), per token or per tensor
#: (activations), the scale mapping the range's absmax onto the format's max. "mxfp4": OCP
#: microscaling, E2M1 elements in blocks of 32 along the input axis with a power-of-two (E8M0) scale.
#: "nvfp4": E2M1 elements in blocks of 16 with an E4M3 block scale times one FP32 tensor scale.
FORMATS = ("int", "fp8_e4m3", "fp8_e5m2", "mxfp4", "nvfp4")
FORMAT_BITS = {"fp8_e4m3": 8, "fp8_e5m2": 8, "mxfp4": 4, "nvfp4": 4}
FORMAT_BLOCK = {"mxfp4": 32, "nvfp4": 16}
FP8_FORMATS = {"fp8_e4m3": E4M3, "fp8_e5m2": E5M2}


def check_format(value: object, what: str = "format") -> str:
    if value not in FORMATS:
        raise QuantizationError(f"{what}={value!r} is not a number format; valid: {', '.join(FORMATS)}")
    return str(value)


def round_to_float_format(x: torch.Tensor, fmt: FloatFormat, ste: bool = False) -> torch.Tensor:
    """x rounded to the nearest value of `fmt` (ties to even mantissa), saturating at +-max_value.

    The spacing of representable values around |x| is 2^(e - mantissa) with e = max(floor(log2|x|),
    1 - bias) (below the smallest normal the spacing stays that of the subnormals)."""
    work = x.double() if x.dtype != torch.float64 else x
    magnitude = work.abs().clamp(max=fmt.max_value)
    _, exponent = torch.frexp(torch.where(magnitude > 0, magnitude, torch.ones_like(magnitude)))
    exponent = torch.clamp(exponent - 1, min=fmt.min_normal_exponent)  # frexp: m in [0.5, 1)
    spacing = torch.pow(2.0, (exponent - fmt.mantissa).to(work.dtype))
    rounded = round_half_even(magnitude / spacing, ste=ste) * spacing
    out = torch.sign(work) * torch.clamp(rounded, max=fmt.max_value)
    return out.to(x.dtype)


#: torch's storage dtypes of the FP8 formats (their casts round as `round_to_float_format` does,
#: but overflow to NaN / inf instead of saturating).
FP8_TORCH_DTYPES = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def fp8_scale(absmax: torch.Tensor, fmt_name: str) -> torch.Tensor:
    """The scale s = absmax / max_value that maps a range's absmax onto the format's largest value."""
    return (absmax / FP8_FORMATS[fmt_name].max_value).clamp(min=SCALE_EPS)


def fp8_fake_quantize(x: torch.Tensor, fmt_name: str, absmax: torch.Tensor, ste: bool = False) -> torch.Tensor:
    """Scaled FP8: x / s in the format, s = absmax / max_value (absmax broadcast against x)."""
    scale = fp8_scale(absmax, fmt_name)
    return round_to_float_format(x / scale, FP8_FORMATS[fmt_name], ste=ste) * scale


def fp8_elements(x: torch.Tensor, fmt_name: str, absmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(elements in torch's FP8 dtype, scale) with elements * scale == fp8_fake_quantize(x, ...)
    bit for bit: the stored form of scaled FP8, what an FP8 GEMM multiplies."""
    fmt = FP8_FORMATS[fmt_name]
    scale = fp8_scale(absmax, fmt_name)
    # torch's cast does not saturate; clamping first makes it round exactly as round_to_float_format
    elements = (x / scale).clamp(-fmt.max_value, fmt.max_value).to(FP8_TORCH_DTYPES[fmt_name])
    return elements, scale


def _blocks(x: torch.Tensor, block: int) -> tuple[torch.Tensor, int]:
    """(..., n) -> (..., ceil(n / block), block), zero-padded at the end; returns the original n."""
    n = x.shape[-1]
    pad = (-n) % block
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(*x.shape[:-1], -1, block), n


def mxfp4_fake_quantize(x: torch.Tensor, ste: bool = False) -> torch.Tensor:
    """OCP MXFP4 along the last axis: blocks of 32 share the scale 2^(floor(log2 absmax) - 2)
    (E8M0; 2 = the exponent of E2M1's largest value 6 = 1.5 * 2^2), elements in E2M1, saturating."""
    blocks, n = _blocks(x, FORMAT_BLOCK["mxfp4"])
    absmax = blocks.detach().abs().amax(dim=-1, keepdim=True)
    _, exponent = torch.frexp(torch.where(absmax > 0, absmax, torch.ones_like(absmax)))
    scale = torch.pow(2.0, (exponent - 1 - 2).to(blocks.dtype))
    out = round_to_float_format(blocks / scale, E2M1, ste=ste) * scale
    return out.reshape(*x.shape[:-1], -1)[..., :n]


def nvfp4_fake_quantize(x: torch.Tensor, tensor_absmax: torch.Tensor | None = None, ste: bool = False) -> torch.Tensor:
    """NVFP4 along the last axis: blocks of 16 with an E4M3 block scale, times one FP32 scale per
    tensor g = absmax / (448 * 6) so that the block scales use E4M3's range; elements in E2M1.
    tensor_absmax: the tensor's absmax (default: x's own)."""
    blocks, n = _blocks(x, FORMAT_BLOCK["nvfp4"])
    detached = blocks.detach()
    amax = detached.abs().amax() if tensor_absmax is None else tensor_absmax
    global_scale = (amax / (E4M3.max_value * E2M1.max_value)).clamp(min=SCALE_EPS)
    block_scale = round_to_float_format(detached.abs().amax(dim=-1, keepdim=True) / (E2M1.max_value * global_scale), E4M3)
    scale = (block_scale * global_scale).clamp(min=SCALE_EPS)
    out = round_to_float_format(blocks / scale, E2M1, ste=ste) * scale
    return out.reshape(*x.shape[:-1], -1)[..., :n]


def format_fake_quantize_weight(w: torch.Tensor, fmt_name: str) -> torch.Tensor:
    """A 2-D weight (out, in) in a float format: FP8 with one scale per row; MXFP4 / NVFP4 in
    blocks along the input axis (NVFP4's tensor scale from the whole weight)."""
    if fmt_name in FP8_FORMATS:
        return fp8_fake_quantize(w, fmt_name, w.detach().abs().amax(dim=1, keepdim=True))
    if fmt_name == "mxfp4":
        return mxfp4_fake_quantize(w)
    if fmt_name == "nvfp4":
        return nvfp4_fake_quantize(w)
    raise QuantizationError(f"{fmt_name!r} is not a float format; valid: {', '.join(FORMATS[1:])}")


def format_fake_quantize_activation(x: torch.Tensor, fmt_name: str, per_token: bool,
                                    absmax: torch.Tensor | None = None, ste: bool = False) -> torch.Tensor:
    """Activations (..., channels) in a float format. FP8: per token (dynamic) or with the static
    per-tensor `absmax` from calibration. MXFP4 / NVFP4: dynamic blocks along the channels (NVFP4's
    tensor scale: the static `absmax` if given, else the tensor's own)."""
    if fmt_name in FP8_FORMATS:
        if per_token or absmax is None:
            absmax = x.detach().abs().amax(dim=-1, keepdim=True) if per_token else x.detach().abs().amax()
        return fp8_fake_quantize(x, fmt_name, absmax, ste=ste)
    if fmt_name == "mxfp4":
        return mxfp4_fake_quantize(x, ste=ste)
    if fmt_name == "nvfp4":
        return nvfp4_fake_quantize(x, None if per_token else absmax, ste=ste)
    raise QuantizationError(f"{fmt_name!r} is not a float format; valid: {', '.join(FORMATS[1:])}")


def format_storage_bits(out_features: int, in_features: int, fmt_name: str) -> int:
    """Bits to store a weight in a float format: elements, plus 16 bits per row (FP8 scales),
    8 bits per block of 32 (MXFP4's E8M0) or per block of 16 (NVFP4's E4M3) and 32 per tensor."""
    numel = out_features * in_features
    if fmt_name in FP8_FORMATS:
        return 8 * numel + QPARAM_BITS * out_features
    blocks = out_features * math.ceil(in_features / FORMAT_BLOCK[fmt_name])
    return 4 * numel + 8 * blocks + (FLOAT_BITS if fmt_name == "nvfp4" else 0)
