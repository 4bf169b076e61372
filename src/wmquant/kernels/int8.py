"""INT8 GEMM linears: W8A8 (and any WxAy with x, y <= 8) on the integer matrix units.

A fake-quantized Linear computes y = x_hat @ w_hat^T + b with x_hat = (q_x - z_x) * s_x (one scale
and zero point per token, or one per tensor) and w_hat = q_w * s_w (symmetric, one scale per
output channel). Both factors pull out of the sum over k:

    y = s_x * s_w * (sum_k q_x q_w  -  z_x * sum_k q_w) + b

The first sum is one exact INT8 x INT8 -> INT32 matmul (`torch._int_mm`); the zero-point term
uses the weight's precomputed row sums. Unsigned activation codes (asymmetric, 0 .. 2^b - 1) are
shifted by 2^(b-1) into int8 first; the shift moves into the zero point, so the result is
unchanged. The scaling is floating point, so the output agrees with the fake-quant output to
float32 rounding. It is written as `mul(_int_mm(a, b), s_x)` followed by pointwise ops, the shape
torch.compile's inductor fuses into the GEMM's epilogue (`enable_inductor_int8_fusion`), so the
INT32 product need not make a round trip through memory.

`torch._int_mm` on CUDA needs K and N multiples of 8 and more than 16 rows: weights are stored
zero-padded to multiples of 8 (zero columns add nothing) and short inputs are padded with rows.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import QuantizationError
from ..quant import qmath
from . import fused_int8
from ._shared import DerivedKernelState, output_dtype, pad_2d, round_up, tensor_bytes

#: torch._int_mm on CUDA: K and N must be multiples of this, and M larger than INT_MM_MIN_ROWS - 1.
INT_MM_ALIGN = 8
INT_MM_MIN_ROWS = 17
ACT_GRANULARITIES = ("per_token", "per_tensor")


@functools.lru_cache(maxsize=None)
def int_mm_runs_on_cpu() -> bool:
    """Whether this torch's CPU `_int_mm` exists and is exact (else an int32 matmul is used)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (5, 24), dtype=torch.int8, generator=gen)
    b = torch.randint(-128, 128, (16, 24), dtype=torch.int8, generator=gen)
    try:
        out = torch._int_mm(a, b.t())
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return bool(torch.equal(out, a.to(torch.int32) @ b.to(torch.int32).t()))


def int8_matmul(a: torch.Tensor, weight: torch.Tensor, use_int_mm: bool | None = None) -> torch.Tensor:
    """Exact a @ weight^T: a (M, K) int8, weight (N, K) int8 -> (M, N) int32.

    CUDA: `torch._int_mm` (K, N multiples of 8; rows are padded up to 17 when fewer). CPU:
    `torch._int_mm` where it runs, else an int32 matmul (same result, slower). `use_int_mm`
    passes that choice in (a constant for torch.compile); None decides here.
    """
    rows = a.shape[0]
    if a.device.type == "cuda":
        if rows < INT_MM_MIN_ROWS:
            a = F.pad(a, (0, 0, 0, INT_MM_MIN_ROWS - rows))
        # The weight is passed as a transposed view of its row-major storage: the column-major
        # B operand that the INT8 tensor-core GEMMs read directly.
        return torch._int_mm(a, weight.t())[:rows]
    if use_int_mm if use_int_mm is not None else int_mm_runs_on_cpu():
        return torch._int_mm(a, weight.t())
    return a.to(torch.int32) @ weight.to(torch.int32).t()


def enable_inductor_int8_fusion() -> bool:
    """Ask torch.compile's inductor to fuse `_int_mm(a, b) * scale` into one GEMM with an epilogue
    (torchao's setting for dynamic INT8). No effect without compile; False where this torch lacks it."""
    try:
        from torch._inductor import config
    except ImportError:  # pragma: no cover - inductor ships with torch
        return False
    if not hasattr(config, "force_fuse_int_mm_with_mul"):
        return False
    config.force_fuse_int_mm_with_mul = True
    return True


def quantize_rows(
    x: torch.Tensor,
    bits: int,
    symmetric: bool,
    scale: torch.Tensor | None = None,
    zero_point: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (M, K) float32 -> (codes int8 (M, K), scale, shifted zero point).

    Per token (one scale per row, from the row's own range) unless `scale`/`zero_point` are given
    (a static per-tensor range). The codes are those of `qmath` (identical rounding), shifted by
    2^(bits-1) when unsigned so that they fit int8; the returned zero point carries the same shift,
    so codes - zero_point is unchanged. scale and zero point broadcast against (M, 1).
    """
    if scale is None:
        scale, zero_point = qmath.qparams_from_range(
            x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True), bits, symmetric
        )
    codes = qmath.quantize(x, scale, zero_point, bits, symmetric)
    shift = 0 if symmetric else 2 ** (bits - 1)
    if shift:
        codes = codes - shift
        zero_point = zero_point - shift
    return codes.to(torch.int8), scale, zero_point


class Int8Linear(DerivedKernelState):  # prepare() re-aliases qweight and kernel_weight after a move
    """A Linear whose weight is int8 codes with one scale per output channel and whose input is
    quantized to int8 on the fly; the product runs as one INT8 GEMM.

    x (..., in_features) float -> (..., out_features), in the dtype a float Linear would return.

    Stored (state dict): `qweight` int8 (out, in), `weight_scale` float32 (out,), `bias`, and for
    a static activation range `input_scale` / `input_zero_point` (float32 scalars, unshifted
    qmath values). Derived (`prepare`): the weight padded to multiples of 8 (`kernel_weight`,
    whose top-left block *is* `qweight`), and padded to the same width: the scales, the row sums
    of the codes (for the zero-point term; exact integers in float32) and the bias.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        w_bits: int,
        a_bits: int,
        a_symmetric: bool,
        a_granularity: str,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if not (qmath.is_quantized(w_bits) and qmath.is_quantized(a_bits)):
            raise QuantizationError(f"Int8Linear needs weights and activations of 2..8 bits, got W{w_bits}A{a_bits}")
        if a_granularity not in ACT_GRANULARITIES:
            raise QuantizationError(f"a_granularity={a_granularity!r} is unknown; valid: {', '.join(ACT_GRANULARITIES)}")
        self.in_features = in_features
        self.out_features = out_features
        self.w_bits = w_bits
        self.a_bits = a_bits
        self.a_symmetric = a_symmetric
        self.a_granularity = a_granularity
        self.use_int_mm = True
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        if a_granularity == "per_tensor":
            self.register_buffer("input_scale", torch.ones((), dtype=torch.float32, device=device))
            self.register_buffer("input_zero_point", torch.zeros((), dtype=torch.float32, device=device))
        else:
            self.input_scale = None
            self.input_zero_point = None
        self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False) if bias else None
        for name in ("kernel_weight", "kernel_scale", "kernel_row_sum", "kernel_bias"):
            self.register_buffer(name, None, persistent=False)
        # Engine-time choices, not stored state (see `wmquant.kernels.real.set_int8_kernel_`): the
        # kernel that runs the layer, a LayerNorm moved in from before it, a GELU from after it.
        self.kernel = "torch"
        self.register_buffer("norm_weight", None, persistent=False)
        self.register_buffer("norm_bias", None, persistent=False)
        self.norm_eps = 0.0
        self.output_gelu = False
        self.prepare()

    def extra_repr(self) -> str:
        kind = "sym" if self.a_symmetric else "asym"
        fused = "".join((", LayerNorm fused in" if self.norm_weight is not None else "",
                         ", GELU fused in" if self.output_gelu else ""))
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"W{self.w_bits}A{self.a_bits} (weights per-channel sym, activations {self.a_granularity} {kind}), "
                f"kernel={self.kernel}{fused}")

    # -- fusion with the neighbouring ops ------------------------------------------------------------
    def fuse_input_norm_(self, norm: nn.LayerNorm) -> None:
        """Compute `norm` (the layer's only producer) on the layer's input, inside the quantization."""
        if tuple(norm.normalized_shape) != (self.in_features,) or norm.weight is None or norm.bias is None:
            raise QuantizationError(f"cannot fuse {norm} into a Linear of {self.in_features} inputs: "
                                    "only an affine LayerNorm over exactly its inputs fuses")
        self.norm_weight = norm.weight.detach().float().clone()
        self.norm_bias = norm.bias.detach().float().clone()
        self.norm_eps = float(norm.eps)

    def fuse_output_gelu_(self) -> None:
        """Apply the exact GELU (nn.GELU()) to the layer's output, inside the GEMM's epilogue."""
        self.output_gelu = True

    def _forward_triton(self, x2: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        norm = None
        if self.norm_weight is not None:
            norm = fused_int8.FusedNorm(self.norm_weight, self.norm_bias, self.norm_eps)
        codes, act_scale, zero_point = fused_int8.rows_to_int8(
            x2, self.a_bits, self.a_symmetric, self.kernel_weight.shape[1], self.input_scale, self.input_zero_point, norm
        )
        return fused_int8.int8_gemm(codes, act_scale, zero_point, self.kernel_weight, self.kernel_scale,
                                    self.kernel_row_sum, self.kernel_bias, self.out_features, out_dtype,
                                    asymmetric=not self.a_symmetric, gelu=self.output_gelu)

    # -- derived tensors ---------------------------------------------------------------------------
    def prepare(self) -> None:
        """Derive the kernel's tensors from `qweight` (after construction, loading, or a move)."""
        if self.qweight.device.type == "meta":
            return
        self.use_int_mm = self.qweight.device.type == "cuda" or int_mm_runs_on_cpu()
        with torch.no_grad():
            rows = round_up(self.out_features, INT_MM_ALIGN)
            cols = round_up(self.in_features, INT_MM_ALIGN)
            padded = pad_2d(self.qweight, rows, cols).contiguous()
            if padded.data_ptr() != self.qweight.data_ptr():
                # qweight becomes a view into the padded buffer: one copy of the codes in memory.
                self.kernel_weight = padded
                self.qweight = padded[: self.out_features, : self.in_features]
            else:
                self.kernel_weight = self.qweight
            width = rows - self.out_features
            self.kernel_scale = F.pad(self.weight_scale.float(), (0, width))
            self.kernel_row_sum = F.pad(self.qweight.sum(dim=1, dtype=torch.int32).float(), (0, width))
            self.kernel_bias = None if self.bias is None else F.pad(self.bias.detach().float(), (0, width))

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_dtype = output_dtype(x)
        lead = x.shape[:-1]
        if self.kernel == "triton":
            return self._forward_triton(x.reshape(-1, self.in_features), out_dtype).reshape(*lead, self.out_features)
        if self.norm_weight is not None:  # what the LayerNorm module before the layer computed
            x = F.layer_norm(x, (self.in_features,), self.norm_weight, self.norm_bias, self.norm_eps)
        x2 = x.reshape(-1, self.in_features).float()
        codes, act_scale, zero_point = quantize_rows(
            x2, self.a_bits, self.a_symmetric, self.input_scale, self.input_zero_point
        )
        padded_cols = self.kernel_weight.shape[1]
        if padded_cols != self.in_features:
            codes = F.pad(codes, (0, padded_cols - self.in_features))
        y = int8_matmul(codes, self.kernel_weight, self.use_int_mm) * act_scale  # (M, out padded), float32
        if not self.a_symmetric:
            y = y - (zero_point * act_scale) * self.kernel_row_sum
        y = y * self.kernel_scale
        if self.kernel_bias is not None:
            y = y + self.kernel_bias
        y = y[:, : self.out_features].to(out_dtype).reshape(*lead, self.out_features)
        return F.gelu(y) if self.output_gelu else y  # what the GELU module after the layer computed

    # -- accounting ----------------------------------------------------------------------------------
    def weight_bytes(self) -> int:
        """Bytes of the stored quantized weight: int8 codes and per-channel scales."""
        return tensor_bytes(self.qweight, self.weight_scale)

    def resident_weight_bytes(self) -> int:
        """Bytes the layer keeps on its device for the weight (padded codes, scales, row sums)."""
        return tensor_bytes(self.kernel_weight, self.weight_scale, self.kernel_scale, self.kernel_row_sum)
