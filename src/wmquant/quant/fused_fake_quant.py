"""Fused activation fake quantization on the GPU: one Triton kernel per call, bit-identical to
`wmquant.quant.qmath`.

Why: in eager PyTorch, `qmath.fake_quantize` is six elementwise kernels (divide, round, add the zero
point, clamp, subtract it, multiply), and per-token quantization adds a min/max pass; each reads and
writes the whole activation. On the shipped Wall model under CEM (15,000 rollouts per step, narrow
layers) those passes cost nearly as much as the matmuls they feed: a W4A4 run whose episodes all plan
took 7.5 s (per tensor) and 8.3 s (per token) per MPC iteration on an H100, against 4.7 and 5.3 s
with these kernels (docs/benchmarks.md). One fused pass reads each activation once and writes it once.

Exactness: the kernels perform the same IEEE fp32 operations as qmath, in the same order, with the
same rounding: a division of two tensors is `div_rn` (correctly rounded, as torch's `/`), a division
by a Python number is a product with its fp32 reciprocal (as torch computes it on CUDA), rounding is `rint` (half to
even, as `torch.round`), and no multiply-add can be contracted (no product is followed by an
addition). That holds for finite inputs; a NaN or infinite activation is not checked for.
`tests/quant/test_fused_fake_quant.py` checks bit equality against qmath on CUDA, rounding ties and
signed zeros included; qmath stays the definition.

Used only where it cannot change a result: fp32 CUDA tensors, contiguous along the quantized axis,
no autograd graph to build (CEM and evaluation; the GD planner's backward pass keeps the
straight-through eager path), outside torch.compile. `WMQUANT_FUSED_FAKE_QUANT=0` turns it off.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from . import qmath

ENV_SWITCH = "WMQUANT_FUSED_FAKE_QUANT"
#: Elements per program of the per-tensor kernel; rows x padded channels per program of the per-token one.
BLOCK_ELEMENTS = 4096
#: Widest row the per-token kernel holds in one program; wider rows take qmath's eager path.
MAX_FUSED_COLS = 16384


try:  # Triton comes with CUDA builds of torch; without it the eager path is the only one
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover - depends on the install
    triton = None


if triton is not None:

    @triton.jit
    def _clamp(value, low, high):
        # torch.clamp: a NaN stays NaN
        return tl.minimum(
            tl.maximum(value, low, propagate_nan=tl.PropagateNan.ALL), high, propagate_nan=tl.PropagateNan.ALL
        )

    @triton.jit
    def _fake_quant(x, scale, zero_point, qmin, qmax):
        # qmath.quantize then qmath.dequantize: clamp(round(x / s) + zp, qmin, qmax), then (q - zp) * s
        q = _clamp(libdevice.rint(tl.div_rn(x, scale)) + zero_point, qmin, qmax)
        return (q - zero_point) * scale

    @triton.jit
    def per_tensor_kernel(
        x_ptr, out_ptr, scale_ptr, zero_point_ptr, n, QMIN: tl.constexpr, QMAX: tl.constexpr, BLOCK: tl.constexpr
    ):
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        x = tl.load(x_ptr + offsets, mask=mask)
        scale = tl.load(scale_ptr)
        zero_point = tl.load(zero_point_ptr)
        tl.store(out_ptr + offsets, _fake_quant(x, scale, zero_point, QMIN, QMAX), mask=mask)

    @triton.jit
    def per_token_kernel(
        x_ptr,
        out_ptr,
        rows,
        cols,
        QMIN: tl.constexpr,
        QMAX: tl.constexpr,
        INV_QMAX: tl.constexpr,
        SCALE_EPS: tl.constexpr,
        SYMMETRIC: tl.constexpr,
        BLOCK_ROWS: tl.constexpr,
        BLOCK_COLS: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        col = tl.arange(0, BLOCK_COLS)
        mask = (row[:, None] < rows) & (col[None, :] < cols)
        offsets = row[:, None] * cols + col[None, :]
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
        # qmath.per_token_fake_quantize: the row's range, widened to contain 0 (so the padding
        # zeros, which lie inside it, change nothing), then qmath.qparams_from_range. Its
        # `range / qmax` divides by a Python number, which torch on CUDA computes as a product with
        # the fp32 reciprocal (not a correctly rounded division): so does this kernel.
        xmin = tl.minimum(tl.min(tl.where(mask, x, float("inf")), axis=1), 0.0)
        xmax = tl.maximum(tl.max(tl.where(mask, x, float("-inf")), axis=1), 0.0)
        if SYMMETRIC:
            scale = tl.maximum(tl.maximum(-xmin, xmax) * INV_QMAX, SCALE_EPS)
            zero_point = tl.zeros_like(scale)
        else:
            scale = tl.maximum((xmax - xmin) * INV_QMAX, SCALE_EPS)
            zero_point = _clamp(libdevice.rint(tl.div_rn(-xmin, scale)), QMIN, QMAX)
        out = _fake_quant(x, scale[:, None], zero_point[:, None], QMIN, QMAX)
        tl.store(out_ptr + offsets, out, mask=mask)


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1") != "0"


def kernels_on(device: torch.device) -> str:
    """Which fake-quant implementation a no-gradient forward on `device` uses: "fused" or "eager"
    (the same numbers either way; recorded in results for provenance)."""
    return "fused" if device.type == "cuda" and enabled() and triton is not None else "eager"


def applies(x: torch.Tensor) -> bool:
    """Whether the fused kernels may replace qmath's eager ops for `x` without changing anything."""
    if not (x.is_cuda and x.dtype == torch.float32 and x.is_contiguous() and x.numel() > 0):
        return False
    if torch.is_grad_enabled() and x.requires_grad:
        return False  # the straight-through backward needs the eager graph
    if torch.compiler.is_compiling():
        return False
    return enabled() and triton is not None


def fake_quantize_per_tensor(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int, symmetric: bool
) -> torch.Tensor:
    """qmath.fake_quantize(x, scale, zero_point, bits, symmetric) for one scale and zero point (0-dim or
    one-element fp32 tensors on x's device)."""
    if not qmath.is_quantized(bits):
        return x
    qmin, qmax = qmath.qrange(bits, symmetric)
    out = torch.empty_like(x)
    n = x.numel()
    scale = scale.reshape(1).to(device=x.device, dtype=torch.float32)
    zero_point = zero_point.reshape(1).to(device=x.device, dtype=torch.float32)
    per_tensor_kernel[(triton.cdiv(n, BLOCK_ELEMENTS),)](
        x, out, scale, zero_point, n, QMIN=float(qmin), QMAX=float(qmax), BLOCK=BLOCK_ELEMENTS
    )
    return out


def fp32_reciprocal(value: int) -> float:
    """1 / value rounded to fp32, as torch's CUDA division by a Python number computes it."""
    return float(np.float32(1.0) / np.float32(value))


def fake_quantize_per_token(x: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    """qmath.per_token_fake_quantize(x, bits, symmetric): one scale per row of the last axis."""
    if not qmath.is_quantized(bits):
        return x
    cols = x.shape[-1]
    if cols > MAX_FUSED_COLS:
        return qmath.per_token_fake_quantize(x, bits, symmetric)
    qmin, qmax = qmath.qrange(bits, symmetric)
    rows = x.numel() // cols
    block_cols = triton.next_power_of_2(cols)
    block_rows = max(1, min(64, BLOCK_ELEMENTS // block_cols))
    out = torch.empty_like(x)
    per_token_kernel[(triton.cdiv(rows, block_rows),)](
        x,
        out,
        rows,
        cols,
        QMIN=float(qmin),
        QMAX=float(qmax),
        INV_QMAX=fp32_reciprocal(qmax),
        SCALE_EPS=qmath.SCALE_EPS,
        SYMMETRIC=symmetric,
        BLOCK_ROWS=block_rows,
        BLOCK_COLS=block_cols,
    )
    return out
