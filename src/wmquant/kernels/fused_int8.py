"""Fused INT8 W8A8 in Triton: the activation quantization fused into the LayerNorm before it, and
the dequantization (and the bias, and fc1's GELU) fused into the INT8 GEMM's epilogue.

Why: `Int8Linear`'s torch path runs a quantized Linear as five to eight kernels. The LayerNorm
writes its output, the per-token range is one pass and the rounding another, `torch._int_mm`
writes an INT32 product (twice BF16's bytes), and the scaling, zero-point term and bias each read
and write it again. At DINO-WM scale these passes cost about as much as the GEMM itself
(docs/benchmarks_gpu_plan.md section 4), so W8A8 ran at half BF16's speed. Here one quantized
Linear is two kernels:

1. `rows_to_int8`: one program per block of rows. It optionally computes the LayerNorm of the row,
   then the row's range (per token) or reads the calibrated one (per tensor), then the codes. It
   writes int8 codes, zero-padded to the GEMM's aligned width, and one scale and zero point per
   row. The input is read once and the codes are written once.
2. `int8_gemm`: a tiled INT8 x INT8 -> INT32 GEMM. Its epilogue computes, in registers,
   y = s_x * s_w * (acc - z_x * rowsum(q_w)) + b, then optionally GELU, and stores y in the
   output dtype. Only the rows and columns of the true shape are stored, so padding never leaves
   the kernel layer and nothing is sliced afterwards.

Agreement with `Int8Linear`'s torch path:
- Quantization: for the same float input the codes are those of `qmath` (round half to even,
  the same clamps). The scale `range * (1 / qmax)` is computed as torch computes
  `range / qmax` on CUDA, and the division x / s is correctly rounded (`div_rn`).
- Epilogue: the same fp32 operations in the same order as the torch path. On CUDA it is compiled
  without multiply-add contraction, so no product is fused into an addition.
- A fused LayerNorm sums the row in another order than torch's kernel, and GELU's erf is
  Triton's. Both differ from torch by float32 rounding only. Like every real-kernel difference,
  that can move an activation across the next quantizer's rounding boundary (one code step,
  rarely; see `wmquant.kernels.real`). `tests/kernels/test_fused_int8.py` bounds both on the CPU.

On the CPU the same kernels run in Triton's interpreter (numpy, slow): that is how the tests check
them without a GPU. The engine uses them on CUDA only (`engine.int8_kernel=triton`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import ConfigError
from ..quant import qmath
from ..quant.fused_fake_quant import fp32_reciprocal

try:  # Triton comes with CUDA builds of torch; on the CPU it is optional (tests use its interpreter)
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

#: |v| at or below this rounds exactly by the fp32 magic-number trick (below 2^23 every
#: integer is representable; the trick's constant 1.5 * 2^23 keeps v + C inside [2^23, 2^24)).
ROUND_LIMIT = float(2**22)
ROUND_MAGIC = float(1.5 * 2**23)
#: Widest row `rows_to_int8` holds in one program (DINO-WM's widest input is 1616 -> 2048).
MAX_ROW_COLS = 8192
GELU_SQRT1_2 = 0.7071067811865476


def available() -> bool:
    return triton is not None


def check_available(device: torch.device) -> None:
    """Refuse, in one line, a device or install the fused kernels cannot serve (checked by the
    engine before calibrating, and by every kernel call)."""
    if triton is None:
        raise ConfigError("engine.int8_kernel=triton needs Triton (it ships with CUDA builds of torch; "
                          "or pip install triton); valid without it: torch")
    if device.type != "cuda" and not interpreting():
        raise ConfigError(f"engine.int8_kernel=triton runs on CUDA, not on {device.type!r} (on the CPU only in "
                          "Triton's slow interpreter, TRITON_INTERPRET=1); valid there: torch")


def _rows_to_int8_source(
    x_ptr, codes_ptr, scale_ptr, zero_ptr, norm_w_ptr, norm_b_ptr, static_scale_ptr, static_zero_ptr,
    rows, cols, x_stride, codes_stride, eps,
    QMIN: tl.constexpr, QMAX: tl.constexpr, INV_QMAX: tl.constexpr, SHIFT: tl.constexpr,
    SCALE_EPS: tl.constexpr, SYMMETRIC: tl.constexpr, PER_TOKEN: tl.constexpr, NORM: tl.constexpr,
    ROUND_LIMIT: tl.constexpr, ROUND_MAGIC: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    col = tl.arange(0, BLOCK_COLS)
    row_ok = row < rows
    mask = row_ok[:, None] & (col[None, :] < cols)
    x = tl.load(x_ptr + row[:, None] * x_stride + col[None, :], mask=mask, other=0.0).to(tl.float32)
    if NORM:
        # nn.LayerNorm over the row: biased variance, eps inside the square root
        mean = tl.sum(x, axis=1) / cols
        centred = tl.where(mask, x - mean[:, None], 0.0)
        variance = tl.sum(centred * centred, axis=1) / cols
        inv_std = 1.0 / tl.sqrt_rn(variance + eps)
        weight = tl.load(norm_w_ptr + col, mask=col < cols, other=0.0)
        bias = tl.load(norm_b_ptr + col, mask=col < cols, other=0.0)
        x = tl.where(mask, centred * inv_std[:, None] * weight[None, :] + bias[None, :], 0.0)
    if PER_TOKEN:
        # qmath.qparams_from_range of the row's range widened to contain 0 (the masked zeros lie
        # inside it, so they change nothing)
        low = tl.minimum(tl.min(tl.where(mask, x, float("inf")), axis=1), 0.0)
        high = tl.maximum(tl.max(tl.where(mask, x, float("-inf")), axis=1), 0.0)
        if SYMMETRIC:
            scale = tl.maximum(tl.maximum(-low, high) * INV_QMAX, SCALE_EPS)
            zero = tl.zeros_like(scale)
        else:
            scale = tl.maximum((high - low) * INV_QMAX, SCALE_EPS)
            ratio = tl.minimum(tl.maximum(tl.div_rn(-low, scale), -ROUND_LIMIT), ROUND_LIMIT)
            zero = tl.minimum(tl.maximum((ratio + ROUND_MAGIC) - ROUND_MAGIC, QMIN), QMAX)
    else:
        scale = tl.zeros((BLOCK_ROWS,), dtype=tl.float32) + tl.load(static_scale_ptr)
        zero = tl.zeros((BLOCK_ROWS,), dtype=tl.float32) + tl.load(static_zero_ptr)
    # qmath.quantize: clamp(round(x / s) + z, qmin, qmax); rounding half to even by the magic
    # number (exact below ROUND_LIMIT; anything beyond it clamps to qmin or qmax either way)
    ratio = tl.minimum(tl.maximum(tl.div_rn(x, scale[:, None]), -ROUND_LIMIT), ROUND_LIMIT)
    q = tl.minimum(tl.maximum(((ratio + ROUND_MAGIC) - ROUND_MAGIC) + zero[:, None], QMIN), QMAX)
    # Unsigned codes move into int8 by -2^(bits-1); the zero point moves with them. Columns from
    # `cols` up to the row stride are written as zeros: the GEMM's aligned padding.
    q = tl.where(mask, q - SHIFT, 0.0)
    pad_mask = row_ok[:, None] & (col[None, :] < codes_stride)
    tl.store(codes_ptr + row[:, None] * codes_stride + col[None, :], q.to(tl.int8), mask=pad_mask)
    tl.store(scale_ptr + row, scale, mask=row_ok)
    tl.store(zero_ptr + row, zero - SHIFT, mask=row_ok)


def _int8_gemm_source(
    a_ptr, w_ptr, out_ptr, a_scale_ptr, a_zero_ptr, w_scale_ptr, w_row_sum_ptr, bias_ptr,
    M, N, K, a_stride, w_stride, out_stride, M_BUCKET,
    ASYMMETRIC: tl.constexpr, HAS_BIAS: tl.constexpr, GELU: tl.constexpr, GELU_SQRT1_2: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Grouped launch order: GROUP_M row tiles share each column tile while it is in L2.
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * tiles_n)
    first_m = group * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    tile_m = first_m + (pid % group_rows)
    tile_n = (pid % (GROUP_M * tiles_n)) // group_rows
    rm = tile_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + rk
        a = tl.load(a_ptr + rm[:, None] * a_stride + k[None, :], mask=(rm[:, None] < M) & (k[None, :] < K), other=0)
        w = tl.load(w_ptr + rn[None, :] * w_stride + k[:, None], mask=(rn[None, :] < N) & (k[:, None] < K), other=0)
        acc += tl.dot(a, w, out_dtype=tl.int32)
    # The epilogue: Int8Linear's torch path, operation for operation
    a_scale = tl.load(a_scale_ptr + rm, mask=rm < M, other=0.0)
    y = acc.to(tl.float32) * a_scale[:, None]
    if ASYMMETRIC:
        a_zero = tl.load(a_zero_ptr + rm, mask=rm < M, other=0.0)
        row_sum = tl.load(w_row_sum_ptr + rn, mask=rn < N, other=0.0)
        y = y - (a_zero * a_scale)[:, None] * row_sum[None, :]
    y = y * tl.load(w_scale_ptr + rn, mask=rn < N, other=0.0)[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + rn, mask=rn < N, other=0.0)[None, :]
    if GELU:
        y = y * 0.5 * (1.0 + tl.erf(y * GELU_SQRT1_2))  # nn.GELU(): x * 0.5 * (1 + erf(x / sqrt 2))
    # a downcast (to bfloat16 or float16) rounds to nearest even, as torch's .to() does
    tl.store(out_ptr + rm[:, None] * out_stride + rn[None, :], y.to(out_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


#: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) tried by the autotuner on CUDA (INT8 tensor
#: cores take K tiles of 32 or more).
GEMM_CONFIGS = ((128, 128, 64, 8, 3), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (64, 64, 128, 4, 3),
                (128, 256, 64, 8, 3), (256, 128, 64, 8, 3))
GROUP_M = 8


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (TRITON_INTERPRET=1, read when Triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass(frozen=True)
class _Kernels:
    rows_to_int8: Callable
    int8_gemm: Callable
    interpreted: bool


_KERNELS: _Kernels | None = None


def _kernels() -> _Kernels:
    """The two kernels, built once: compiled for CUDA (the GEMM autotuned), or, under
    TRITON_INTERPRET=1, run by Triton's interpreter on CPU tensors with one fixed GEMM tile (the
    autotuner needs a GPU). A module global rather than a cache decorator, so that torch.compile
    traces through it."""
    global _KERNELS
    if _KERNELS is None:  # callers have run check_available: Triton is installed
        gemm = triton.jit(_int8_gemm_source)
        interpreted = interpreting()
        if not interpreted:
            configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
                       for m, n, k, w, s in GEMM_CONFIGS]
            gemm = triton.autotune(configs=configs, key=["N", "K", "M_BUCKET"])(gemm)
        _KERNELS = _Kernels(triton.jit(_rows_to_int8_source), gemm, interpreted)
    return _KERNELS


def _launch_options(device: torch.device) -> dict:
    # No multiply-add contraction on CUDA, so the epilogue rounds as the torch path's separate ops do.
    return {"enable_fp_fusion": False} if device.type == "cuda" else {}


@dataclass(frozen=True)
class FusedNorm:
    """A LayerNorm computed inside `rows_to_int8` (weight and bias float32 on the input's device)."""

    weight: torch.Tensor
    bias: torch.Tensor
    eps: float


def rows_to_int8(
    x: torch.Tensor,
    bits: int,
    symmetric: bool,
    padded_cols: int,
    static_scale: torch.Tensor | None = None,
    static_zero_point: torch.Tensor | None = None,
    norm: FusedNorm | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (M, K) float -> (codes int8 (M, padded_cols), scale (M, 1), shifted zero point (M, 1)).

    What `wmquant.kernels.int8.quantize_rows` returns (then zero-padded), of `x`, or of
    LayerNorm(x) when `norm` is given; per token unless the static per-tensor `static_scale` /
    `static_zero_point` are given.
    """
    rows, cols = x.shape
    if cols > MAX_ROW_COLS:
        raise ConfigError(f"rows of {cols} inputs are wider than the fused kernel's {MAX_ROW_COLS}; use engine.int8_kernel=torch")
    if x.stride(1) != 1:
        x = x.contiguous()
    qmin, qmax = qmath.qrange(bits, symmetric)
    device = x.device
    codes = torch.empty(rows, padded_cols, dtype=torch.int8, device=device)
    scale = torch.empty(rows, 1, dtype=torch.float32, device=device)
    zero_point = torch.empty(rows, 1, dtype=torch.float32, device=device)
    per_token = static_scale is None
    placeholder = scale  # pointer arguments a branch does not read
    block_cols = triton.next_power_of_2(max(cols, padded_cols))
    block_rows = max(1, min(16, 4096 // block_cols))
    check_available(device)
    _kernels().rows_to_int8[(triton.cdiv(rows, block_rows),)](
        x, codes, scale, zero_point,
        norm.weight if norm else placeholder, norm.bias if norm else placeholder,
        placeholder if per_token else static_scale.reshape(1).float(),
        placeholder if per_token else static_zero_point.reshape(1).float(),
        rows, cols, x.stride(0), padded_cols, float(norm.eps) if norm else 0.0,
        QMIN=float(qmin), QMAX=float(qmax), INV_QMAX=fp32_reciprocal(qmax),
        SHIFT=0.0 if symmetric else float(2 ** (bits - 1)), SCALE_EPS=qmath.SCALE_EPS, SYMMETRIC=symmetric,
        PER_TOKEN=per_token, NORM=norm is not None, ROUND_LIMIT=ROUND_LIMIT, ROUND_MAGIC=ROUND_MAGIC,
        BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols, **_launch_options(device),
    )
    return codes, scale, zero_point


def int8_gemm(
    codes: torch.Tensor,
    act_scale: torch.Tensor,
    act_zero_point: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_row_sum: torch.Tensor,
    bias: torch.Tensor | None,
    out_features: int,
    out_dtype: torch.dtype,
    asymmetric: bool,
    gelu: bool = False,
) -> torch.Tensor:
    """(M, out_features) = dequantize(codes @ weight^T) (+ bias, then GELU if asked), in `out_dtype`.

    codes (M, Kp) int8; weight (Np, Kp) int8 with Np >= out_features; act_scale, act_zero_point
    (M, 1) float32; weight_scale, weight_row_sum and bias (Np,) float32: `Int8Linear`'s tensors.
    """
    rows, width = codes.shape
    device = codes.device
    out = torch.empty(rows, out_features, dtype=out_dtype, device=device)
    if rows == 0:
        return out
    check_available(device)
    kernels = _kernels()
    args = (codes, weight, out, act_scale, act_zero_point, weight_scale, weight_row_sum,
            bias if bias is not None else weight_scale, rows, out_features, width,
            codes.stride(0), weight.stride(0), out.stride(0), triton.next_power_of_2(rows))
    flags = dict(ASYMMETRIC=asymmetric, HAS_BIAS=bias is not None, GELU=gelu, GELU_SQRT1_2=GELU_SQRT1_2, GROUP_M=GROUP_M)
    if not kernels.interpreted:
        # M_BUCKET: the autotuner's cache key for the row count, to a power of two (CEM's batch
        # shrinks as episodes succeed; retuning for every row count would cost more than it wins)
        def grid(meta):
            return (triton.cdiv(rows, meta["BLOCK_M"]) * triton.cdiv(out_features, meta["BLOCK_N"]),)

        kernels.int8_gemm[grid](*args, **flags, **_launch_options(device))
    else:
        block_m, block_n, block_k = 128, 128, 128  # the interpreter: fewer, larger programs run faster in numpy
        grid = (triton.cdiv(rows, block_m) * triton.cdiv(out_features, block_n),)
        kernels.int8_gemm[grid](*args, **flags, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    return out
