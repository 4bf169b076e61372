"""The real backend: frozen fake-quantized Linears become linears that run low-bit kernels.

    quantize_(model, qconfig); ...calibrate...; freeze_(model)     # fake quantization (wmquant.quant)
    to_real_backend_(model)                                         # same model, real kernels

Which fake-quant layers map onto a kernel, and how closely:

| fake-quant QuantLinear | real layer | agreement with fake quant |
|---|---|---|
| weights 2..8 bits, symmetric, per channel; activations 2..8 bits, per token (dynamic) or per tensor (calibrated, static), symmetric or not | `Int8Linear`: one INT8 GEMM (`torch._int_mm`; with `set_int8_kernel_(model, "triton")`, two fused Triton kernels, `fused_int8.py`) | codes identical, integer sums exact: fp32 rounding only |
| weights 2..4 bits, per channel or groups of 32/64/128/256, symmetric or not; activations not quantized | `Int4WeightOnlyLinear`: int4 packed matmul | CPU float32: fp32 rounding; CUDA: bf16 activations and bf16 scale/zero table |
| weights and activations in FP8 E4M3 (`w_format = a_format = fp8_e4m3`), weights per channel; activations per token (dynamic) or per tensor (calibrated, static) | `Fp8Linear`: one scaled FP8 GEMM (`torch._scaled_mm`) | elements identical, products exact: fp32 rounding where the GEMM returns float32 (CPU), bf16 rounding of the output where it returns bfloat16 |

Refused, with a QuantizationError naming the layer: other number formats (E5M2, MXFP4, NVFP4, and
FP8 weights with integer or unquantized activations), group-wise or asymmetric weights together with
quantized activations (an INT8 GEMM applies one weight scale per output channel, outside the sum
over inputs), weight-only quantization above 4 bits, activation-only quantization, quantizers
that are switched off, observing or uncalibrated, quantized convolutions, and quantized attention
matmuls (`*_tap` activation quantizers): those have no real kernel here, and silently leaving
them fake would misreport what runs.

Within a whole model the two backends agree to rounding, not bit for bit: a float32 rounding
difference can move an activation across a rounding boundary of the next quantizer, which then
picks the neighbouring code (one quantization step for that element).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import ConfigError, QuantizationError
from ..quant import qmath
from ..quant.api import active_targets
from ..quant.config import QuantConfig
from ..quant.layers import QUANTIZED_LAYER_TYPES, ActQuantizer, QuantLinear
from .fp8 import FP8_FORMAT, Fp8Linear, quantize_rows_fp8
from .int4 import Int4WeightOnlyLinear, kernel_layout
from .int8 import Int8Linear, enable_inductor_int8_fusion

ENGINE_BACKENDS = ("fake", "real")
#: `engine.int8_kernel`: how Int8Linear layers run. "torch": torch._int_mm and eager (or inductor-fused)
#: pointwise ops. "triton": wmquant.kernels.fused_int8, with each block's LayerNorms and fc1's GELU
#: moved into the quantized Linears next to them (CUDA).
INT8_KERNELS = ("torch", "triton")
KIND_INT8 = "int8_gemm"
KIND_INT4 = "int4_weight_only"
KIND_FP8 = "fp8_gemm"
KINDS = (KIND_INT8, KIND_INT4, KIND_FP8)
REAL_LINEAR_TYPES = (Int8Linear, Int4WeightOnlyLinear, Fp8Linear)


@dataclass(frozen=True)
class RealLinearSpec:
    """Everything needed to rebuild an empty real layer (stored in an exported config.yaml)."""

    kind: str
    in_features: int
    out_features: int
    bias: bool
    w_bits: int
    w_group_size: int | None = None
    w_symmetric: bool = True
    a_bits: int = qmath.OFF_BITS
    a_symmetric: bool = False
    a_granularity: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RealLinearSpec":
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise QuantizationError(f"unknown real-layer key(s) {unknown}; valid: {sorted(valid)}")
        spec = cls(**dict(data))
        if spec.kind not in KINDS:
            raise QuantizationError(f"unknown real-layer kind {spec.kind!r}; valid: {', '.join(KINDS)}")
        return spec


def _refuse(name: str, why: str) -> QuantizationError:
    return QuantizationError(f"{name}: {why}; no real kernel runs it (use engine.backend=fake for this config)")


def _kind(name: str, in_features: int, w_bits: int, w_group_size: int | None, w_symmetric: bool,
          a_bits: int, w_format: str = "int", a_format: str = "int") -> str:
    """The real kernel for a Linear quantized this way; QuantizationError if none runs it exactly."""
    if not qmath.is_quantized(w_bits):
        raise _refuse(name, "activation-only quantization (weights in float)")
    if w_format != "int" or (qmath.is_quantized(a_bits) and a_format != "int"):
        shown = f"w_format={w_format}, " + (f"a_format={a_format}" if qmath.is_quantized(a_bits) else "activations in float")
        if not (w_format == a_format == FP8_FORMAT and qmath.is_quantized(a_bits)):
            raise _refuse(name, f"the number formats ({shown}); the real kernels run integer grids, and FP8 "
                                f"only as W8A8 with w_format=a_format={FP8_FORMAT}")
        return KIND_FP8
    if not qmath.is_quantized(a_bits):
        if w_bits > 4:
            raise _refuse(name, f"weight-only W{w_bits}A16 (the weight-only kernel holds 2..4-bit weights)")
        kernel_layout(in_features, w_group_size)  # raises for group sizes the kernel cannot run
        return KIND_INT4
    if qmath.num_groups(in_features, w_group_size) != 1:
        raise _refuse(name, f"group-wise weights (w_group_size={w_group_size}) with quantized activations "
                            "(an INT8 GEMM takes one weight scale per output channel)")
    if not w_symmetric:
        raise _refuse(name, "asymmetric weights with quantized activations (the INT8 GEMM path needs symmetric weights)")
    return KIND_INT8


def real_spec(name: str, layer: nn.Module) -> RealLinearSpec:
    """The real layer a frozen fake-quantized Linear maps to; QuantizationError if none does exactly."""
    if not isinstance(layer, QuantLinear):
        raise _refuse(name, f"a {type(layer).__name__} (the real backend runs quantized Linear layers only)")
    weights, acts = layer.weight_quantizer, layer.input_quantizer
    if weights is not None and not weights.enabled:
        raise _refuse(name, "its weight quantizer is switched off")
    if acts is not None and acts.mode != "quant":
        raise _refuse(name, f"its input quantizer is in mode {acts.mode!r}, not 'quant' (calibrate and freeze_ first)")
    if acts is not None and acts.granularity == "per_tensor" and not acts.frozen:
        raise _refuse(name, "its static input range is not calibrated")
    w_bits = weights.bits if weights is not None else qmath.OFF_BITS
    a_bits = acts.bits if acts is not None else qmath.OFF_BITS
    kind = _kind(name, layer.in_features, w_bits, weights.group_size if weights else None,
                 weights.symmetric if weights else True, a_bits, weights.format if weights else "int",
                 acts.format if acts is not None else "int")
    common = dict(in_features=layer.in_features, out_features=layer.out_features, bias=layer.bias is not None,
                  w_bits=w_bits, w_group_size=weights.group_size, w_symmetric=weights.symmetric)
    if kind == KIND_INT4:
        return RealLinearSpec(kind=KIND_INT4, **common)
    if kind == KIND_FP8:
        return RealLinearSpec(kind=KIND_FP8, a_bits=a_bits, a_symmetric=True, a_granularity=acts.granularity, **common)
    return RealLinearSpec(kind=KIND_INT8, a_bits=a_bits, a_symmetric=acts.symmetric,
                          a_granularity=acts.granularity, **common)


def check_real_config(model: nn.Module, qconfig: QuantConfig) -> None:
    """Before any calibration: QuantizationError unless every module that `qconfig` quantizes in
    the (float) `model` will have a real kernel after quantization."""
    for target in active_targets(model, qconfig):
        scheme = target.scheme
        if target.is_tap:
            raise _refuse(target.name, "a quantized attention matmul input (an activation quantizer outside a Linear)")
        if not isinstance(target.module, nn.Linear):
            raise _refuse(target.name, f"a {type(target.module).__name__} (the real backend runs quantized Linear layers only)")
        kind = _kind(target.name, target.module.in_features, scheme.w_bits, scheme.w_group_size,
                     scheme.w_symmetric, scheme.a_bits, scheme.w_format, scheme.a_format)
        if kind == KIND_INT8 and not scheme.a_include_zero:
            raise _refuse(target.name, "per-token activations without 0 in their range (a_include_zero=false)")


def spec_of(layer: nn.Module) -> RealLinearSpec:
    """The spec of a real layer (what an exported config.yaml records for it)."""
    common = dict(in_features=layer.in_features, out_features=layer.out_features, bias=layer.bias is not None,
                  w_bits=layer.w_bits)
    if isinstance(layer, Int8Linear):
        return RealLinearSpec(kind=KIND_INT8, a_bits=layer.a_bits, a_symmetric=layer.a_symmetric,
                              a_granularity=layer.a_granularity, **common)
    if isinstance(layer, Int4WeightOnlyLinear):
        return RealLinearSpec(kind=KIND_INT4, w_group_size=layer.group_size, w_symmetric=layer.symmetric, **common)
    if isinstance(layer, Fp8Linear):
        return RealLinearSpec(kind=KIND_FP8, a_bits=layer.a_bits, a_symmetric=True, a_granularity=layer.a_granularity,
                              **common)
    raise QuantizationError(f"{type(layer).__name__} is not a real-kernel layer")


def build_real_linear(spec: RealLinearSpec, device: torch.device | str | None = None,
                      int4_kernel: str = "auto") -> nn.Module:
    """An empty real layer for `spec` (codes zero), e.g. to load an exported checkpoint into."""
    if spec.kind == KIND_INT8:
        return Int8Linear(spec.in_features, spec.out_features, spec.bias, spec.w_bits, spec.a_bits,
                          spec.a_symmetric, spec.a_granularity, device=device)
    if spec.kind == KIND_FP8:
        return Fp8Linear(spec.in_features, spec.out_features, spec.bias, spec.a_granularity, device=device)
    return Int4WeightOnlyLinear(spec.in_features, spec.out_features, spec.bias, spec.w_bits, spec.w_group_size,
                                spec.w_symmetric, kernel=int4_kernel, device=device)


@torch.no_grad()
def _weight_codes(layer: QuantLinear) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes (out, in), scale, zero point (out, n_groups)) of the layer's fake-quant weight, with a
    check that they dequantize to exactly the weight the fake layer computes with."""
    quantizer = layer.weight_quantizer
    weight2d = qmath.as_2d_weight(layer.weight.detach().float())
    scale, zero_point = quantizer.compute_qparams(weight2d)
    groups = qmath.to_groups(weight2d, quantizer.group_size)
    codes = qmath.quantize(groups, scale.unsqueeze(-1), zero_point.unsqueeze(-1), quantizer.bits, quantizer.symmetric)
    dequantized = qmath.from_groups(qmath.dequantize(codes, scale.unsqueeze(-1), zero_point.unsqueeze(-1)), weight2d.shape[1])
    if not torch.equal(dequantized, qmath.as_2d_weight(quantizer(layer.weight.float()))):
        raise QuantizationError("weight codes do not reproduce the fake-quantized weight; re-run quantization")
    return qmath.from_groups(codes, weight2d.shape[1]), scale, zero_point


@torch.no_grad()
def _fp8_linear_from_quant(layer: QuantLinear, real: Fp8Linear) -> Fp8Linear:
    """`real` filled with the E4M3 elements and scales of the fake-quant FP8 `layer`, checked to
    dequantize to exactly the weight the fake layer computes with."""
    weight2d = qmath.as_2d_weight(layer.weight.detach().float())
    elements, scale = quantize_rows_fp8(weight2d)
    if not torch.equal(elements.float() * scale, layer.weight_quantizer(layer.weight.float())):
        raise QuantizationError("FP8 weight elements do not reproduce the fake-quantized weight; re-run quantization")
    real.qweight.copy_(elements)
    real.weight_scale.copy_(scale[:, 0])
    if layer.bias is not None:
        real.bias.copy_(layer.bias.detach())
    if real.input_absmax is not None:
        real.input_absmax.copy_(layer.input_quantizer.scale.reshape(()))  # a float format keeps the absmax there
    real.prepare()
    return real


def real_linear_from_quant(layer: QuantLinear, spec: RealLinearSpec, int4_kernel: str = "auto") -> nn.Module:
    """A real layer computing what the frozen fake-quant `layer` computes (see the module docstring)."""
    device = layer.weight.device
    real = build_real_linear(spec, device=device, int4_kernel=int4_kernel)
    if spec.kind == KIND_FP8:
        return _fp8_linear_from_quant(layer, real)
    codes, scale, zero_point = _weight_codes(layer)
    with torch.no_grad():
        if layer.bias is not None:
            real.bias.copy_(layer.bias.detach())
        if spec.kind == KIND_INT4:
            real.set_codes(codes, scale, None if spec.w_symmetric else zero_point)
            return real
        real.qweight.copy_(codes.to(torch.int8))
        real.weight_scale.copy_(scale[:, 0])
        if spec.a_granularity == "per_tensor":
            real.input_scale.copy_(layer.input_quantizer.scale.reshape(()))
            real.input_zero_point.copy_(layer.input_quantizer.zero_point.reshape(()))
    real.prepare()  # the kernel's padded scales, row sums and bias derive from what was just stored
    return real


def _parent(model: nn.Module, name: str) -> nn.Module:
    parent_name = name.rpartition(".")[0]
    return model.get_submodule(parent_name) if parent_name else model


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def check_real_backend(model: nn.Module) -> dict[str, RealLinearSpec]:
    """The real layer for every fake-quantized module of `model`, without changing it.

    Raises QuantizationError for the first module with no exact real kernel (see the module
    docstring), and when the model holds no quantized layer at all.
    """
    specs: dict[str, RealLinearSpec] = {}
    for name, module in model.named_modules():
        if isinstance(module, QUANTIZED_LAYER_TYPES):
            if getattr(module, "input_rotation", None) is not None:
                raise _refuse(name, "a Linear with an online input rotation (method rotate)")
            specs[name] = real_spec(name, module)
        elif isinstance(module, ActQuantizer) and not isinstance(_parent(model, name), QUANTIZED_LAYER_TYPES):
            raise _refuse(name, "a quantized attention matmul input (an activation quantizer outside a Linear)")
    if not specs:
        raise QuantizationError("the model has no fake-quantized layer; quantize it (wmquant.quant.quantize_) first")
    return specs


def to_real_backend_(model: nn.Module, int4_kernel: str = "auto") -> nn.Module:
    """Replace every frozen fake-quantized Linear by its real-kernel layer, in place; returns `model`.

    Everything is checked before the first module is replaced, so a refused model stays as it was.
    int4_kernel: "auto", "int4pack" (torch's int4 packed matmul) or "dequant" (dequantize, float
    matmul); see `wmquant.kernels.int4.KERNELS`.
    """
    specs = check_real_backend(model)
    if any(spec.kind == KIND_INT8 for spec in specs.values()):
        enable_inductor_int8_fusion()
    for name, spec in specs.items():
        _set_submodule(model, name, real_linear_from_quant(model.get_submodule(name), spec, int4_kernel))
    return model


def real_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, REAL_LINEAR_TYPES)]


def _kernel_label(layer: nn.Module) -> str:
    if isinstance(layer, Int8Linear):  # "int8_gemm" (torch._int_mm) or "int8_gemm_triton" (fused)
        return KIND_INT8 if layer.kernel == "torch" else f"{KIND_INT8}_{layer.kernel}"
    return getattr(layer, "kernel", "")


def real_weight_bytes(model: nn.Module) -> dict[str, Any]:
    """Bytes of the real layers' weights: as stored, as resident on the device (with the kernels'
    copies), and what the same weights take in FP16, plus the stored / FP16 ratio."""
    layers = real_linears(model)
    stored = sum(m.weight_bytes() for _, m in layers)
    resident = sum(m.resident_weight_bytes() for _, m in layers)
    fp16 = sum(2 * m.in_features * m.out_features for _, m in layers)
    return {
        "layers": len(layers),
        "stored_bytes": stored,
        "resident_bytes": resident,
        "fp16_bytes": fp16,
        "stored_over_fp16": stored / fp16 if fp16 else None,
        "resident_over_fp16": resident / fp16 if fp16 else None,
        "kernels": sorted({_kernel_label(m) for _, m in layers}),
        "notes": sorted({m.kernel_note for _, m in layers if getattr(m, "kernel_note", "")}),
    }


def check_engine_backend(backend: str) -> str:
    if backend not in ENGINE_BACKENDS:
        raise ConfigError(f"unknown engine.backend {backend!r}; valid: {', '.join(ENGINE_BACKENDS)}")
    return backend


def check_int8_kernel(kernel: str, device: torch.device | str | None = None) -> str:
    """`engine.int8_kernel`, refused in one line if unknown, or if it cannot run on `device`."""
    if kernel not in INT8_KERNELS:
        raise ConfigError(f"unknown engine.int8_kernel {kernel!r}; valid: {', '.join(INT8_KERNELS)}")
    if kernel == "triton" and device is not None:
        from . import fused_int8

        fused_int8.check_available(torch.device(device))
    return kernel


def fuse_int8_neighbours_(model: nn.Module) -> list[str]:
    """Move, in every transformer Block, the LayerNorms into the Int8Linear layers that alone read
    them (norm1 -> attn.qkv, norm2 -> mlp.fc1) and the MLP's exact GELU into fc1; the moved modules
    become identities. The model computes the same function. Returns the fused sites' names."""
    from ..models.blocks import Block

    fused: list[str] = []
    for name, block in model.named_modules():
        if not isinstance(block, Block):
            continue
        prefix = f"{name}." if name else ""
        for norm_name, linear in (("norm1", block.attn.qkv), ("norm2", block.mlp.fc1)):
            norm = getattr(block, norm_name)
            if isinstance(linear, Int8Linear) and isinstance(norm, nn.LayerNorm) and linear.norm_weight is None:
                linear.fuse_input_norm_(norm)
                setattr(block, norm_name, nn.Identity())
                fused.append(prefix + norm_name)
        act = block.mlp.act
        if isinstance(block.mlp.fc1, Int8Linear) and isinstance(act, nn.GELU) and act.approximate == "none":
            block.mlp.fc1.fuse_output_gelu_()
            block.mlp.act = nn.Identity()
            fused.append(prefix + "mlp.act")
    return fused


def set_int8_kernel_(model: nn.Module, kernel: str) -> list[str]:
    """Run every Int8Linear of `model` with `kernel` (INT8_KERNELS); "triton" first fuses the
    neighbouring LayerNorms and GELUs (`fuse_int8_neighbours_`). Returns the fused sites."""
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    check_int8_kernel(kernel, layers[0].qweight.device if layers and kernel == "triton" else None)
    fused = fuse_int8_neighbours_(model) if kernel == "triton" else []
    for layer in layers:
        layer.kernel = kernel
    return fused


def apply_engine_backend_(model: nn.Module, backend: str, int8_kernel: str = "torch") -> nn.Module:
    """`engine.backend`: "fake" keeps fake quantization, "real" converts to real kernels (in place),
    whose INT8 layers then run with `int8_kernel` (`engine.int8_kernel`)."""
    if check_engine_backend(str(backend)) == "real":
        check_int8_kernel(int8_kernel)  # before the model changes
        to_real_backend_(model)
        set_int8_kernel_(model, int8_kernel)
    return model
