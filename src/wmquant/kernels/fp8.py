"""FP8 GEMM linears: W8A8 in E4M3 on the FP8 matrix units (Hopper and Ada; the CPU runs the same op).

A Linear fake-quantized with `w_format = a_format = "fp8_e4m3"` computes y = x_hat @ w_hat^T + b
with w_hat = e_w * s_w (E4M3 elements, one scale per output channel, s_w = absmax / 448) and
x_hat = e_x * s_x (one scale per token from the token's absmax, or one static scale from the
calibrated absmax). Both scales pull out of the sum over k:

    y = s_x * s_w * sum_k e_x e_w + b

A product of two E4M3 values has at most 8 significant bits, so it is exact in float32, and
`torch._scaled_mm` with row-wise scales (s_x per row of x, s_w per column of w^T) computes the
whole expression in one GEMM. The elements are those of `qmath.fp8_elements`, bit for bit the
fake quantizer's, so with a float32 output the result agrees with fake quantization to float32
rounding (the order of the sum).

`torch._scaled_mm` on CUDA needs the inner dimension and the weight's rows in multiples of 16: the
weight is stored zero-padded to multiples of 16 (zero columns add nothing) and inputs are padded to
match, in float32 before the cast (so no FP8 kernel but the cast itself is needed; only layers whose
width is not a multiple of 16 pay the copy). On CUDA the input's rows are padded too, in case a
release checks them as well (a copy only when the row count is not already a multiple). The output is float32 wherever the device's
row-wise scaled GEMM offers it and bfloat16 otherwise (`scaled_mm_out_dtype`, probed once per
device); the bias is added in float32 after the GEMM either way.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import QuantizationError
from ..quant import qmath
from ._shared import DerivedKernelState, output_dtype, pad_2d, round_up, tensor_bytes

FP8_FORMAT = "fp8_e4m3"
FP8_DTYPE = qmath.FP8_TORCH_DTYPES[FP8_FORMAT]
#: torch._scaled_mm on CUDA: dimensions in multiples of this.
SCALED_MM_ALIGN = 16
ACT_GRANULARITIES = ("per_token", "per_tensor")


@functools.lru_cache(maxsize=None)
def scaled_mm_out_dtype(device: str) -> torch.dtype:
    """float32 if `torch._scaled_mm` with row-wise scales returns float32 on `device`, else bfloat16
    (the output every FP8-capable GPU offers); QuantizationError if it runs neither."""
    a = torch.ones(SCALED_MM_ALIGN, SCALED_MM_ALIGN, device=device).to(FP8_DTYPE)
    scale_a = torch.ones(SCALED_MM_ALIGN, 1, device=device)
    scale_b = torch.ones(1, SCALED_MM_ALIGN, device=device)
    errors = []
    for dtype in (torch.float32, torch.bfloat16):
        try:
            out = torch._scaled_mm(a, a.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=dtype)
        except (RuntimeError, NotImplementedError) as err:
            errors.append(f"{dtype}: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}")
            continue
        if out.dtype == dtype and bool((out.float() == SCALED_MM_ALIGN).all()):
            return dtype
        errors.append(f"{dtype}: wrong result")
    raise QuantizationError(f"torch._scaled_mm with row-wise scales does not run on {device} ({'; '.join(errors)}); "
                            "use engine.backend=fake for FP8 schemes here")


def fp8_matmul(elements: torch.Tensor, weight: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor,
               out_dtype: torch.dtype) -> torch.Tensor:
    """(row_scale * col_scale) * (elements @ weight^T): elements (M, K) and weight (N, K) in FP8,
    row_scale (M, 1), col_scale (1, N), both float32; one scaled FP8 GEMM accumulating in float32."""
    # The weight goes in as a transposed view of its row-major storage: the column-major second
    # operand the FP8 tensor-core GEMMs require.
    return torch._scaled_mm(elements, weight.t(), scale_a=row_scale, scale_b=col_scale, out_dtype=out_dtype)


def quantize_rows_fp8(x: torch.Tensor, absmax: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) float32 -> (E4M3 elements (M, K), scale (M, 1) float32).

    One scale per token from its own absmax, unless the static per-tensor `absmax` is given. The
    elements are `qmath.fp8_elements`', the fake quantizer's bit for bit."""
    if absmax is None:
        absmax = x.abs().amax(dim=-1, keepdim=True)
    elements, scale = qmath.fp8_elements(x, FP8_FORMAT, absmax)
    return elements, scale.reshape(-1, 1).expand(x.shape[0], 1).contiguous()


class Fp8Linear(DerivedKernelState):  # prepare() re-derives the padded weight and scales after a move
    """A Linear whose weight is E4M3 elements with one scale per output channel and whose input is
    cast to E4M3 on the fly; the product runs as one scaled FP8 GEMM.

    x (..., in_features) float -> (..., out_features), in the dtype a float Linear would return.

    Stored (state dict): `qweight` float8_e4m3fn (out, in), `weight_scale` float32 (out,), `bias`,
    and for a static activation range `input_absmax` (a float32 scalar: the calibrated range's
    absmax, as the fake quantizer keeps it). Derived (`prepare`): the weight zero-padded to
    multiples of 16 (`kernel_weight`), the scales as a (1, out padded) row and the padded bias.
    """

    kernel = "fp8_scaled_mm"
    w_bits = 8
    a_bits = 8

    def __init__(self, in_features: int, out_features: int, bias: bool, a_granularity: str,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        if a_granularity not in ACT_GRANULARITIES:
            raise QuantizationError(f"a_granularity={a_granularity!r} is unknown; valid: {', '.join(ACT_GRANULARITIES)}")
        self.in_features = in_features
        self.out_features = out_features
        self.a_granularity = a_granularity
        self.gemm_out_dtype = torch.float32
        self.register_buffer("qweight", torch.zeros(out_features, in_features, device=device).to(FP8_DTYPE))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        if a_granularity == "per_tensor":
            self.register_buffer("input_absmax", torch.ones((), dtype=torch.float32, device=device))
        else:
            self.input_absmax = None
        self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False) if bias else None
        for name in ("kernel_weight", "kernel_scale", "kernel_bias"):
            self.register_buffer(name, None, persistent=False)
        self.prepare()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"FP8 E4M3 W8A8 (weights per-channel, activations {self.a_granularity})")

    # -- derived tensors ---------------------------------------------------------------------------
    def prepare(self) -> None:
        """Derive the kernel's tensors from the stored state (after construction, loading, or a move)."""
        if self.qweight.device.type == "meta":
            return
        with torch.no_grad():
            if self.qweight.dtype != FP8_DTYPE:
                # a module-wide .to(dtype) casts every floating buffer; E4M3 values survive any
                # wider float exactly, so the elements come back unchanged
                self.qweight = self.qweight.to(FP8_DTYPE)
            self.weight_scale = self.weight_scale.float()
            if self.input_absmax is not None:
                self.input_absmax = self.input_absmax.float()
            rows = round_up(self.out_features, SCALED_MM_ALIGN)
            cols = round_up(self.in_features, SCALED_MM_ALIGN)
            if (rows, cols) == (self.out_features, self.in_features):
                self.kernel_weight = self.qweight = self.qweight.contiguous()
            else:
                # padded as an (exact) float32 copy and cast back, as the inputs are, and qweight
                # kept as a view into the padded buffer (one copy of the elements)
                self.kernel_weight = pad_2d(self.qweight.float(), rows, cols).to(FP8_DTYPE).contiguous()
                self.qweight = self.kernel_weight[: self.out_features, : self.in_features]
            self.kernel_scale = F.pad(self.weight_scale, (0, rows - self.out_features), value=1.0).reshape(1, rows)
            self.kernel_bias = None if self.bias is None else F.pad(self.bias.detach().float(), (0, rows - self.out_features))
        self.gemm_out_dtype = scaled_mm_out_dtype(str(self.qweight.device))

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_dtype = output_dtype(x)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).float()
        rows = x2.shape[0]
        padded_rows = round_up(rows, SCALED_MM_ALIGN) if x2.device.type == "cuda" else rows
        x2 = pad_2d(x2, padded_rows, self.kernel_weight.shape[1])
        elements, act_scale = quantize_rows_fp8(x2, self.input_absmax)
        y = fp8_matmul(elements, self.kernel_weight, act_scale, self.kernel_scale, self.gemm_out_dtype).float()
        if self.kernel_bias is not None:
            y = y + self.kernel_bias
        return y[:rows, : self.out_features].to(out_dtype).reshape(*lead, self.out_features)

    # -- accounting ----------------------------------------------------------------------------------
    def dequantized_weight(self) -> torch.Tensor:
        """The weight the layer computes with, (out, in) float32."""
        return self.qweight.float() * self.weight_scale[:, None]

    def weight_bytes(self) -> int:
        """Bytes of the stored quantized weight: FP8 elements and per-channel scales."""
        return tensor_bytes(self.qweight, self.weight_scale)

    def resident_weight_bytes(self) -> int:
        """Bytes the layer keeps on its device for the weight (padded elements, scales)."""
        return tensor_bytes(self.kernel_weight, self.weight_scale, self.kernel_scale)
