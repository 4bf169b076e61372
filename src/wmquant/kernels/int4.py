"""INT4 weight-only linears (W4A16): 4-bit weights with group-wise scales, float activations.

The kernel is torch's int4 packed matmul ("tinygemm"): `torch._weight_int4pack_mm` on CUDA (bf16
activations) and `torch._weight_int4pack_mm_for_cpu` on the CPU (float32 activations too). It
reads unsigned 4-bit codes u in 0..15 and dequantizes each (group, output channel) as

    w = (u - 8) * scale + zero

A fake-quantized weight maps onto it exactly:

* symmetric, q in [-2^(b-1), 2^(b-1) - 1], w = q * s:           u = q + 8, zero = 0
* asymmetric, q in [0, 2^b - 1], zero point z, w = (q - z) * s: u = q,     zero = (8 - z) * s

The kernel supports groups of 32, 64, 128 or 256 inputs. A per-channel weight (one scale per
row) is run with its scale repeated over kernel groups; the input dimension is zero-padded to a
whole number of groups (padded activations are zero, so padded weights contribute nothing).

Stored (state dict, device independent): `qweight` uint8 (out, ceil(in/2)) two codes per byte,
even input index in the high nibble; `weight_scale` float32 (out, n_groups); for asymmetric
weights `weight_zero_point` uint8 (out, n_groups). `prepare` derives the device's packed layout.
`kernel` picks the matmul: "int4pack" (the packed kernel), "dequant" (dequantize the weight, float
matmul) or "auto" (see KERNELS). Where the packed kernel is unavailable, the layer falls back to
"dequant" and says why in `kernel_note`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import QuantizationError
from ..quant import qmath
from ._shared import DerivedKernelState, output_dtype, pad_2d, round_up, tensor_bytes

KERNEL_GROUP_SIZES = (32, 64, 128, 256)
#: Output channels are padded to a multiple of this (the CPU packing needs 16, CUDA 8).
ROW_ALIGN = 16
#: The code the kernel reads as zero weight when zero = 0.
CODE_OFFSET = 8
#: "auto" picks per call where each pays:
#: - CPU: the packed kernel, except for float32 activations, where torch's packed kernel is ~45x
#:   slower than dequantize + float32 GEMM (measured: 404 -> 3072, 392 rows, 2 cores: 0.57 s vs 13 ms).
#: - CUDA: the packed kernel (tinygemm, built for few rows, where a weight-only GEMM is bound by
#:   reading the weights) up to AUTO_PACKED_MAX_ROWS rows per call, dequantize + BF16 GEMM above.
#:   At the CEM batch the packed kernel lost 4.4x (H100, DINO-WM scale, 300 samples: 0.611 s
#:   against 0.140 s per episode-step, docs/benchmarks.md). Where the two cross is measured by
#:   `wmquant bench --sections kernels` (`int4_crossover`); 256 rows is below every planning batch.
KERNELS = ("auto", "int4pack", "dequant")
AUTO_PACKED_MAX_ROWS = 256


def kernel_layout(in_features: int, group_size: int | None) -> tuple[int, int]:
    """(kernel group size, padded in_features) for a weight quantized with `group_size`.

    Raises QuantizationError for group sizes the kernel cannot run (not 32, 64, 128, 256, and
    smaller than in_features).
    """
    if group_size is None or group_size >= in_features:
        padded = round_up(in_features, KERNEL_GROUP_SIZES[0])
        return max(g for g in KERNEL_GROUP_SIZES if padded % g == 0), padded
    if group_size not in KERNEL_GROUP_SIZES:
        raise QuantizationError(
            f"the int4 kernel runs groups of {', '.join(map(str, KERNEL_GROUP_SIZES))} inputs (or per-channel), "
            f"not w_group_size={group_size}"
        )
    return group_size, round_up(in_features, group_size)


def inner_k_tiles(padded_in: int) -> int:
    """The packing's inner k-tiles (2, 4 or 8 tiles of 16 inputs): the largest that divides the input."""
    return next(t for t in (8, 4, 2) if padded_in % (16 * t) == 0)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """codes (rows, cols) with values 0..15 -> uint8 (rows, ceil(cols/2)), even column in the high nibble."""
    codes = codes.to(torch.uint8)
    if codes.shape[1] % 2:
        codes = F.pad(codes, (0, 1))
    return (codes[:, 0::2] << 4) | codes[:, 1::2]


def unpack_nibbles(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """Inverse of `pack_nibbles`: uint8 (rows, ceil(cols/2)) -> uint8 codes (rows, cols)."""
    both = torch.stack([packed >> 4, packed & 0xF], dim=-1)
    return both.reshape(packed.shape[0], -1)[:, :cols]


class Int4WeightOnlyLinear(DerivedKernelState):
    """A Linear whose weight is 4-bit codes with group-wise scales; activations stay float.

    x (..., in_features) -> (..., out_features), in the dtype a float Linear would return.
    The matmul runs in bf16 on CUDA (the kernel's only activation dtype) and in x's dtype on the CPU.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        w_bits: int,
        group_size: int | None,
        symmetric: bool,
        kernel: str = "auto",
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if not (qmath.is_quantized(w_bits) and w_bits <= 4):
            raise QuantizationError(f"Int4WeightOnlyLinear holds weights of 2..4 bits, got {w_bits}")
        if kernel not in KERNELS:
            raise QuantizationError(f"int4 kernel {kernel!r} is unknown; valid: {', '.join(KERNELS)}")
        self.in_features = in_features
        self.out_features = out_features
        self.w_bits = w_bits
        self.group_size = group_size
        self.symmetric = symmetric
        self.kernel = kernel
        self.kernel_note = ""
        self.kernel_group, self.padded_in = kernel_layout(in_features, group_size)
        groups = qmath.num_groups(in_features, group_size)
        self.register_buffer("qweight", torch.zeros(out_features, -(-in_features // 2), dtype=torch.uint8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, groups, dtype=torch.float32, device=device))
        if symmetric:
            self.weight_zero_point = None
        else:
            self.register_buffer("weight_zero_point", torch.zeros(out_features, groups, dtype=torch.uint8, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False) if bias else None
        self.register_buffer("kernel_weight", None, persistent=False)
        self.register_buffer("scale_and_zero", None, persistent=False)
        self.prepare()

    def extra_repr(self) -> str:
        group = "per-channel" if self.group_size is None else f"group={self.group_size}"
        kind = "sym" if self.symmetric else "asym"
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"W{self.w_bits}A16 {group} {kind}, kernel={self.kernel}")

    # -- codes ---------------------------------------------------------------------------------------
    def set_codes(self, codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None) -> None:
        """Store qmath's codes (out, in) (signed if symmetric), scale and zero point (out, n_groups)."""
        unsigned = codes + CODE_OFFSET if self.symmetric else codes
        if unsigned.min() < 0 or unsigned.max() > 15:
            raise QuantizationError("int4 codes out of range 0..15; the weight is not a <=4-bit quantized weight")
        with torch.no_grad():
            self.qweight.copy_(pack_nibbles(unsigned))
            self.weight_scale.copy_(scale)
            if not self.symmetric:
                self.weight_zero_point.copy_(zero_point.to(torch.uint8))
        self.prepare()

    def _expanded_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and (signed) zero point per (out, input), float32, over the unpadded inputs."""
        width = qmath.effective_group_size(self.in_features, self.group_size)
        scale = self.weight_scale.float().repeat_interleave(width, dim=1)[:, : self.in_features]
        if self.symmetric:
            return scale, torch.full_like(scale, CODE_OFFSET)
        zero = self.weight_zero_point.float().repeat_interleave(width, dim=1)[:, : self.in_features]
        return scale, zero

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight the layer computes with, (out, in): bit-identical to the fake-quant weight in float32."""
        codes = unpack_nibbles(self.qweight, self.in_features).float()
        scale, zero = self._expanded_qparams()
        return ((codes - zero) * scale).to(dtype)

    # -- derived tensors -----------------------------------------------------------------------------
    def prepare(self) -> None:
        """Derive the device's packed weight and bf16/float32 scale-and-zero table from the stored codes."""
        self.kernel_weight = None
        self.scale_and_zero = None
        device = self.qweight.device
        if device.type == "meta" or self.kernel == "dequant":
            return
        rows = round_up(self.out_features, ROW_ALIGN)
        codes = unpack_nibbles(self.qweight, self.in_features).to(torch.int32)
        codes = pad_2d(codes, rows, self.padded_in, value=CODE_OFFSET)
        tiles = inner_k_tiles(self.padded_in)
        try:
            if device.type == "cuda":
                packed = torch._convert_weight_to_int4pack(pack_nibbles(codes).contiguous(), tiles)
            else:
                packed = torch._convert_weight_to_int4pack_for_cpu(codes.contiguous(), tiles)
        except (RuntimeError, AttributeError, NotImplementedError) as err:
            self.kernel = "dequant"
            self.kernel_note = f"int4 packed matmul unavailable on {device.type} ({type(err).__name__}); dequantize + float matmul"
            return
        kernel_groups = self.padded_in // self.kernel_group
        scale = self.weight_scale.float()
        zero_point = torch.full_like(scale, CODE_OFFSET) if self.symmetric else self.weight_zero_point.float()
        # One (scale, zero) per kernel group: a per-channel scale repeats, a group scale maps 1:1.
        repeat = kernel_groups // scale.shape[1]
        scale = scale.repeat_interleave(repeat, dim=1)
        zero = (CODE_OFFSET - zero_point.repeat_interleave(repeat, dim=1)) * scale
        scale = pad_2d(scale, rows, kernel_groups, value=1.0)
        zero = pad_2d(zero, rows, kernel_groups, value=0.0)
        table_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.kernel_weight = packed
        self.scale_and_zero = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous().to(table_dtype)

    def _drop_derived(self) -> None:
        # The packed layout is device specific: drop it before the stored codes move.
        self.kernel_weight = None
        self.scale_and_zero = None

    # -- forward -------------------------------------------------------------------------------------
    def _matmul_dtype(self, x: torch.Tensor) -> torch.dtype:
        if x.device.type == "cuda":
            return torch.bfloat16
        return x.dtype if x.dtype in (torch.float32, torch.bfloat16, torch.float16) else torch.float32

    def _packed_pays(self, a: torch.Tensor) -> bool:
        """Whether this call runs the packed kernel (see KERNELS), for the 2-D input `a`."""
        if self.kernel_weight is None:  # "dequant", or the packed kernel is unavailable here
            return False
        if self.kernel == "int4pack":
            return True
        if a.device.type == "cuda":
            return a.shape[0] <= AUTO_PACKED_MAX_ROWS
        return a.dtype != torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_dtype = output_dtype(x)
        lead = x.shape[:-1]
        dtype = self._matmul_dtype(x)
        a = x.reshape(-1, self.in_features).to(dtype)
        if not self._packed_pays(a):
            y = F.linear(a, self.dequantized_weight(dtype))
        else:
            a = F.pad(a, (0, self.padded_in - self.in_features)).contiguous()
            if a.device.type == "cuda":
                y = torch._weight_int4pack_mm(a, self.kernel_weight, self.kernel_group, self.scale_and_zero)
            else:
                table = self.scale_and_zero.to(dtype)
                y = torch._weight_int4pack_mm_for_cpu(a, self.kernel_weight, self.kernel_group, table)
            y = y[:, : self.out_features]
        if self.bias is not None:
            y = y.float() + self.bias.float()
        return y.to(out_dtype).reshape(*lead, self.out_features)

    # -- accounting ----------------------------------------------------------------------------------
    def weight_bytes(self) -> int:
        """Bytes of the stored quantized weight: packed 4-bit codes, scales, zero points."""
        return tensor_bytes(self.qweight, self.weight_scale, self.weight_zero_point)

    def resident_weight_bytes(self) -> int:
        """Bytes the layer keeps on its device for the weight (stored codes and the kernel's copy)."""
        return self.weight_bytes() + tensor_bytes(self.kernel_weight, self.scale_and_zero)
