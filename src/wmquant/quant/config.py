"""Quantization as data: which modules are quantized, and how.

`QuantScheme` says how one module is quantized (bits, symmetry, granularity, observers);
`QuantConfig` gives the encoder and the predictor their own scheme and selects modules by name
pattern (fnmatch, where `*` also matches dots). The model's own code never changes.

Defaults follow the paper: symmetric weights, asymmetric activations, per-channel weights,
per-tensor static activations, minmax observers; and they quantize what the study quantizes:
the weights and the inputs of the four Linears of every encoder and predictor block.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..errors import ConfigError, QuantizationError
from . import qmath


class QuantConfigError(QuantizationError, ConfigError):
    """A quantization setting that is out of range or unknown (both a config and a quant error)."""


A_GRANULARITIES = ("per_tensor", "per_token")
OBSERVERS = ("minmax", "omse")
PARTS = ("encoder", "predictor")

_BLOCK_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")

#: Named groups of module-name patterns; a `targets` entry equal to a key expands to its patterns.
TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    "blocks": tuple(f"{part}.blocks.*.{linear}" for part in PARTS for linear in _BLOCK_LINEARS),
    "attention_matmuls": tuple(f"*.attn.{tap}" for tap in ("q_tap", "k_tap", "v_tap", "probs_tap")),
    "patch_embed": ("encoder.patch_embed.proj",),
    "action_encoder": ("action_encoder.patch_embed",),
    "proprio_encoder": ("proprio_encoder.patch_embed",),
}
DEFAULT_TARGETS = TARGET_PRESETS["blocks"]


def _fail(message: str) -> None:
    raise QuantConfigError(message)


@dataclass(frozen=True)
class QuantScheme:
    """How one module is quantized. 16 bits = off.

    w_group_size: None = one scale per output channel, G = groups of G consecutive inputs per row.
    a_granularity: "per_tensor" (static, calibrated) or "per_token" (dynamic, one scale per token).
    w_observer / a_observer: "minmax", or "omse" (MSE clip search: per weight group over clip
    ratios 0.35..1; per activation tensor over shrink factors 1..0.11 on a calibration sample).
    quantwm_weight_scale: reproduce QuantWM's minmax symmetric denominator (2^b - 1)/2 (a bug, off).
    QuantWM's OMSE observer always divides by 2^(b-1) - 1, so the flag applies to minmax weights
    only (`minmax_quantwm_scale`): with w_observer="omse" it changes nothing, as in QuantWM.
    w_format / a_format: the number format (qmath.FORMATS): "int" (the integer grids), "fp8_e4m3",
    "fp8_e5m2" (bits 8), "mxfp4", "nvfp4" (bits 4; their blocks replace w_group_size).
    a_include_zero: widen each per-token activation range to contain 0 (the default, as per-tensor
    ranges are); false reproduces QuantWM's per-token quantizer, which takes the token's own min and
    max (2.3x less MSE on all-positive tokens, e.g. after a GELU).
    """

    w_bits: int = 16
    a_bits: int = 16
    w_group_size: int | None = None
    w_symmetric: bool = True
    a_symmetric: bool = False
    a_granularity: str = "per_tensor"
    w_observer: str = "minmax"
    a_observer: str = "minmax"
    quantwm_weight_scale: bool = False
    a_include_zero: bool = True
    w_format: str = "int"
    a_format: str = "int"

    def __post_init__(self) -> None:
        for what in ("w_bits", "a_bits"):
            try:
                qmath.check_bits(getattr(self, what), what)
            except QuantizationError as err:
                raise QuantConfigError(str(err)) from None
        try:
            qmath.check_group_size(self.w_group_size)
        except QuantizationError as err:
            raise QuantConfigError(f"w_group_size: {err}") from None
        for what in ("w_symmetric", "a_symmetric", "quantwm_weight_scale", "a_include_zero"):
            if not isinstance(getattr(self, what), bool):
                _fail(f"{what}={getattr(self, what)!r} must be true or false")
        if self.a_granularity not in A_GRANULARITIES:
            _fail(f"a_granularity={self.a_granularity!r} is unknown; valid: {', '.join(A_GRANULARITIES)}")
        for what in ("w_observer", "a_observer"):
            if getattr(self, what) not in OBSERVERS:
                _fail(f"{what}={getattr(self, what)!r} is unknown; valid: {', '.join(OBSERVERS)}")
        for what, bits in (("w_format", self.w_bits), ("a_format", self.a_bits)):
            fmt = getattr(self, what)
            try:
                qmath.check_format(fmt, what)
            except QuantizationError as err:
                raise QuantConfigError(str(err)) from None
            if fmt != "int" and qmath.is_quantized(bits) and bits != qmath.FORMAT_BITS[fmt]:
                _fail(f"{what}={fmt} stores {qmath.FORMAT_BITS[fmt]} bits per value; got {what[0]}_bits={bits}")
        if self.w_format != "int" and self.w_group_size is not None:
            _fail(f"w_format={self.w_format} has its own scaling blocks; w_group_size must be null (per channel), "
                  f"got {self.w_group_size}")
        if self.a_format != "int" and self.a_observer != "minmax":
            _fail(f"a_format={self.a_format} takes its range from min/max; a_observer must be 'minmax'")
        if self.a_observer == "omse" and self.a_granularity != "per_tensor":
            _fail("a_observer='omse' searches a static range and needs a_granularity='per_tensor'")

    @property
    def minmax_quantwm_scale(self) -> bool:
        """Whether the weights' symmetric scale divides by QuantWM's (2^b - 1)/2: only for minmax
        weights with quantwm_weight_scale (QuantWM's OMSE never used that denominator)."""
        return self.quantwm_weight_scale and self.w_observer == "minmax"

    @property
    def quantizes_weights(self) -> bool:
        return qmath.is_quantized(self.w_bits)

    @property
    def quantizes_activations(self) -> bool:
        return qmath.is_quantized(self.a_bits)

    @property
    def is_identity(self) -> bool:
        return not (self.quantizes_weights or self.quantizes_activations)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "QuantScheme":
        _check_keys(cls, data, "quantization scheme")
        return cls(**dict(data))


def _check_keys(cls: type, data: Mapping[str, Any], what: str) -> None:
    if not isinstance(data, Mapping):
        _fail(f"{what} must be a mapping, got {type(data).__name__}")
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - valid)
    if unknown:
        _fail(f"unknown {what} key(s) {unknown}; valid: {sorted(valid)}")


def expand_targets(patterns: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Replace preset names (TARGET_PRESETS keys) by their patterns; keep order, drop repeats."""
    expanded: list[str] = []
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            _fail(f"target pattern {pattern!r} must be a non-empty string")
        for item in TARGET_PRESETS.get(pattern, (pattern,)):
            if item not in expanded:
                expanded.append(item)
    return tuple(expanded)


@dataclass(frozen=True)
class QuantConfig:
    """Which modules are quantized, and with which scheme.

    targets: fnmatch patterns on module names, or preset names from TARGET_PRESETS ("blocks",
    "attention_matmuls", "patch_embed", "action_encoder", "proprio_encoder"); stored expanded.
    ignore: patterns removed from the selection.
    A module named `encoder.*` uses `encoder`, `predictor.*` uses `predictor`, anything else
    (action/proprio encoders) uses `other`, which defaults to the predictor's scheme because
    those embeddings feed the predictor.
    """

    encoder: QuantScheme = field(default_factory=QuantScheme)
    predictor: QuantScheme = field(default_factory=QuantScheme)
    targets: tuple[str, ...] = DEFAULT_TARGETS
    ignore: tuple[str, ...] = ()
    other: QuantScheme | None = None

    def __post_init__(self) -> None:
        for part in ("encoder", "predictor", "other"):
            value = getattr(self, part)
            if isinstance(value, Mapping):
                object.__setattr__(self, part, QuantScheme.from_dict(value))
            elif not (value is None and part == "other") and not isinstance(value, QuantScheme):
                _fail(f"{part} must be a QuantScheme or a mapping, got {type(value).__name__}")
        for key in ("targets", "ignore"):
            value = getattr(self, key)
            if isinstance(value, str) or not isinstance(value, Sequence):  # a config file's list is a Sequence
                _fail(f"{key} must be a list of patterns, got {value!r}")
        object.__setattr__(self, "targets", expand_targets(tuple(self.targets)))
        object.__setattr__(self, "ignore", expand_targets(tuple(self.ignore)))
        if not self.targets:
            _fail("targets is empty; give at least one module-name pattern or preset")

    def named_schemes(self) -> list[tuple[str, QuantScheme]]:
        """(part, scheme) for encoder, predictor and, when set, other."""
        parts = [("encoder", self.encoder), ("predictor", self.predictor), ("other", self.other)]
        return [(part, scheme) for part, scheme in parts if scheme is not None]

    def scheme_for(self, module_name: str) -> QuantScheme:
        if module_name.startswith("encoder."):
            return self.encoder
        if module_name.startswith("predictor."):
            return self.predictor
        return self.other if self.other is not None else self.predictor

    def to_dict(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder.to_dict(),
            "predictor": self.predictor.to_dict(),
            "other": None if self.other is None else self.other.to_dict(),
            "targets": list(self.targets),
            "ignore": list(self.ignore),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "QuantConfig":
        _check_keys(cls, data, "quantization config")
        return cls(**data)  # lists of patterns become tuples there; a single string is refused, not split

    @classmethod
    def uniform(cls, w_bits: int = 16, a_bits: int = 16, **scheme: Any) -> "QuantConfig":
        """The same scheme for encoder and predictor (the study's usual setting)."""
        same = QuantScheme(w_bits=w_bits, a_bits=a_bits, **scheme)
        return cls(encoder=same, predictor=same)
