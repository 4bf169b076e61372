"""Rotations for low-bit activations (QuaRot-style): an orthogonal rotation of every quantized
Linear's input space, half folded into the weight and half applied online.

For a Linear y = x W^T and an orthogonal R (R R^T = I): y = (x R)(W R)^T. The weight is replaced by
W R once (folded), and the input is multiplied by R at run time, in front of the activation
quantizer (`input_rotation` of the layer). The float model's outputs do not change. A rotation
spreads an input channel's outlier over all channels, so per-tensor and per-token activation
ranges tighten, and so do the weight rows' ranges.

R is a randomized Hadamard matrix H diag(signs) / sqrt(d) where d is a power of two (QuaRot's
choice: fast, and maximally spreading), else a Haar-random orthogonal matrix (QR of a Gaussian
matrix with the signs of R's diagonal fixed), drawn from `seed` and the layer's name.

The rotation is online, not fused through the residual stream as in QuaRot: wmquant's blocks use
LayerNorm (not RMSNorm), whose mean subtraction a residual rotation does not commute with, and the
predictor concatenates action and proprio embeddings into its tokens. Followed by a method that
needs inputs (GPTQ), the recorded inputs are the rotated ones (`recorders.layer_input_rows`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from ..api import _set_submodule, active_targets
from ..config import QuantConfig, QuantConfigError
from ..recorders import CalibrationData
from .base import MethodResult, PTQMethod, check_choice, check_positive, register_method


@dataclass
class RotateOptions:
    seed: int = 0
    # "hadamard": randomized Hadamard where the width is a power of two, else random orthogonal;
    # "orthogonal": random orthogonal everywhere
    kind: str = "hadamard"
    min_width: int = 2  # leave narrower inputs unrotated

    def __post_init__(self) -> None:
        check_choice(self, "kind", ("hadamard", "orthogonal"))
        check_positive(self, "min_width")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise QuantConfigError(f"rotate seed={self.seed!r} must be an integer")


def sylvester_hadamard(width: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The Sylvester Hadamard matrix of a power-of-two width (entries +-1)."""
    h = torch.ones(1, 1, dtype=dtype)
    while h.shape[0] < width:
        h = torch.cat([torch.cat([h, h], dim=1), torch.cat([h, -h], dim=1)], dim=0)
    return h


def rotation_matrix(width: int, seed: int, kind: str = "hadamard") -> torch.Tensor:
    """An orthogonal (width, width) matrix in float64, reproducible from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "hadamard" and width & (width - 1) == 0:
        signs = torch.randint(0, 2, (width,), generator=gen, dtype=torch.float64) * 2 - 1
        return sylvester_hadamard(width) * signs[None, :] / width ** 0.5
    q, r = torch.linalg.qr(torch.randn(width, width, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]


def layer_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class RotatedLinear(nn.Linear):
    """A float Linear whose weight holds W R and whose input is rotated by R online: the same
    function as the original Linear. `quantize_` turns it into a QuantLinear that keeps the
    rotation in front of its input quantizer."""

    @classmethod
    def from_linear(cls, linear: nn.Linear, rotation: torch.Tensor) -> "RotatedLinear":
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        new.weight, new.bias = linear.weight, linear.bias
        new.train(linear.training)
        with torch.no_grad():
            new.weight.copy_((linear.weight.double() @ rotation).to(linear.weight.dtype))
        new.register_buffer("input_rotation", rotation.to(linear.weight.dtype))
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x @ self.input_rotation.to(x.dtype), self.weight, self.bias)


@register_method("rotate")
class Rotate(PTQMethod):
    display_name = "Rotate"
    supports_float_formats = True
    rotates_inputs = True
    options = RotateOptions

    def transform(self, model: nn.Module, qconfig: QuantConfig, calib: CalibrationData,
                  options: RotateOptions) -> MethodResult:
        rotated = []
        for target in active_targets(model, qconfig):
            layer = target.module
            if target.is_tap or not isinstance(layer, nn.Linear) or layer.in_features < options.min_width:
                continue
            rotation = rotation_matrix(layer.in_features, layer_seed(options.seed, target.name), options.kind)
            _set_submodule(model, target.name, RotatedLinear.from_linear(layer, rotation))
            rotated.append(target.name)
        return MethodResult(report={"kind": options.kind, "seed": options.seed, "rotated_layers": rotated})
