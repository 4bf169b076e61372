"""The interface every PTQ method implements, and what it hands back.

A method is a small class registered by name. `transform(model, qconfig, calib, options)` changes
the float model (equivalence transforms, clipping, GPTQ's rounding) and returns a `MethodResult`:
per-module weight qparams for `quantize_`, optionally an activation observer, and a report. The
pipeline (`calibrate_and_quantize`) then quantizes the model with `quantize_`, so the final grid
is always computed by the same quantizer that inference uses, after the method's changes.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from ...errors import QuantizationError
from ..api import active_targets
from ..recorders import CalibrationData
from ..config import PARTS, QuantConfig, QuantConfigError
from ..layers import ActRangeClip, WeightQParams


#: Whether a method's long computation shows a progress bar (`calibrate_and_quantize(progress=...)`).
_SHOWS_PROGRESS: contextvars.ContextVar[bool] = contextvars.ContextVar("wmquant_method_progress", default=False)


@contextlib.contextmanager
def showing_progress(enabled: bool) -> Iterator[None]:
    """Within this context, `progress_bar`s are shown when `enabled`."""
    token = _SHOWS_PROGRESS.set(enabled)
    try:
        yield
    finally:
        _SHOWS_PROGRESS.reset(token)


def progress_bar(total: int, desc: str) -> tqdm:
    """A bar for a method's own computation (shown only inside `showing_progress(True)`)."""
    return tqdm(total=total, desc=desc, disable=not _SHOWS_PROGRESS.get(), leave=False, dynamic_ncols=True)


@dataclass
class NoOptions:
    """A method without hyper-parameters."""


@dataclass(frozen=True)
class Requirements:
    block_inputs: bool = False
    layer_inputs: bool = False
    act_stats: bool = False
    rollouts: bool = False  # whole planning rollouts (z0, actions) of the world model


@dataclass
class MethodResult:
    weight_qparams: dict[str, WeightQParams] = field(default_factory=dict)
    act_observer: str | None = None
    layer_schemes: dict[str, Any] = field(default_factory=dict)  # module name -> its own QuantScheme (mixed precision)
    act_clips: dict[str, ActRangeClip] = field(default_factory=dict)  # layer name -> its input's range clip
    report: dict[str, Any] = field(default_factory=dict)


def check_positive(options: object, *names: str) -> None:
    for name in names:
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise QuantConfigError(f"{type(options).__name__}.{name}={value!r} must be a positive number")


def check_non_negative(options: object, *names: str) -> None:
    for name in names:
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise QuantConfigError(f"{type(options).__name__}.{name}={value!r} must be a number >= 0")


def check_choice(options: object, name: str, choices: tuple) -> None:
    value = getattr(options, name)
    if value not in choices:
        raise QuantConfigError(f"{type(options).__name__}.{name}={value!r} is unknown; valid: {', '.join(map(str, choices))}")


class PTQMethod:
    """Base class. Subclasses set the class attributes and implement `transform`."""

    name: ClassVar[str] = ""
    supports_activation_quant: ClassVar[bool] = True
    needs_block_inputs: ClassVar[bool] = False
    needs_layer_inputs: ClassVar[bool] = False
    needs_act_stats: ClassVar[bool] = False
    needs_rollouts: ClassVar[bool] = False
    options: ClassVar[type] = NoOptions
    #: The method leaves the weights on its own quantization grid (fixed qparams or learned
    #: clipping bound to its transformed weights): in a recipe, nothing may follow it.
    finalizes_weights: ClassVar[bool] = False
    #: How reports print the method ("" = the registered name).
    display_name: ClassVar[str] = ""
    #: The method works with float number formats (FP8, MXFP4, NVFP4); searches over integer grids
    #: (clipping, GPTQ's rounding) do not.
    supports_float_formats: ClassVar[bool] = False
    #: The method folds per-channel scales across a norm -> Linear pair (SmoothQuant, AWQ,
    #: OmniQuant's LET): exact only while the Linear sees the norm's output unrotated.
    folds_channel_scales: ClassVar[bool] = False
    #: The method rotates Linear inputs (rotate): no channel-scale folding may follow it.
    rotates_inputs: ClassVar[bool] = False
    #: The method chooses each layer's bit widths (mixed): a later method would quantize with the
    #: config's widths, so nothing may follow it.
    chooses_widths: ClassVar[bool] = False

    def folds_scales(self, options: Any) -> bool:
        """Whether the method, with these options, folds per-channel scales (`folds_channel_scales`)."""
        return self.folds_channel_scales

    def make_options(self, overrides: Mapping[str, Any] | Any = None) -> Any:
        """The options dataclass with `overrides` applied; unknown keys raise QuantConfigError."""
        if isinstance(overrides, self.options):
            return overrides
        overrides = dict(overrides or {})
        valid = {f.name for f in dataclasses.fields(self.options)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise QuantConfigError(f"unknown option(s) {unknown} for method {self.name!r}; valid: {sorted(valid) or 'none'}")
        for f in dataclasses.fields(self.options):
            if f.name in overrides and isinstance(overrides[f.name], list):
                overrides[f.name] = tuple(overrides[f.name])
        try:
            return self.options(**overrides)
        except TypeError as err:
            raise QuantConfigError(f"bad options for method {self.name!r}: {err}") from None

    def requirements(self, options: Any) -> Requirements:
        return Requirements(self.needs_block_inputs, self.needs_layer_inputs, self.needs_act_stats, self.needs_rollouts)

    def check_config(self, qconfig: QuantConfig, options: Any) -> None:
        """Refuse settings this method cannot honour (before any calibration runs)."""
        if not self.supports_float_formats:
            for part, scheme in qconfig.named_schemes():
                if (scheme.w_format, scheme.a_format) != ("int", "int"):
                    able = ", ".join(n for n, cls in sorted(METHODS.items()) if cls.supports_float_formats)
                    raise QuantConfigError(
                        f"method {self.name!r} searches integer grids; {part} formats ({scheme.w_format}, "
                        f"{scheme.a_format}) need one of: {able}")
        if not self.supports_activation_quant:
            for part, scheme in qconfig.named_schemes():
                if scheme.quantizes_activations:
                    raise QuantConfigError(
                        f"method {self.name!r} is weight-only; {part} a_bits={scheme.a_bits} must be 16"
                    )

    def check_model(self, model: nn.Module, qconfig: QuantConfig, options: Any,
                    act_stats: Mapping[str, torch.Tensor] | None) -> None:
        """Model-dependent checks (e.g. required statistics present); default: none."""

    def block_parts(self, model: nn.Module, qconfig: QuantConfig) -> tuple[str, ...]:
        """Parts whose blocks hold a Linear target with quantized weights (block-wise methods)."""
        parts = []
        for part in PARTS:
            prefix = f"{part}.blocks."
            if any(t.name.startswith(prefix) and not t.is_tap and t.scheme.quantizes_weights
                   for t in active_targets(model, qconfig)):
                parts.append(part)
        return tuple(parts)

    def transform(self, model: nn.Module, qconfig: QuantConfig, calib: CalibrationData, options: Any) -> MethodResult:
        raise NotImplementedError


METHODS: dict[str, type[PTQMethod]] = {}


def register_method(name: str):
    """Class decorator: make a PTQMethod available under `name`."""

    def register(cls: type[PTQMethod]) -> type[PTQMethod]:
        if name in METHODS:
            raise ValueError(f"PTQ method {name!r} is registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls

    return register


def get_method(name: str) -> PTQMethod:
    """An instance of the method registered as `name`; QuantizationError lists the valid names."""
    if name not in METHODS:
        raise QuantConfigError(f"unknown quantization method {name!r}; valid: {', '.join(sorted(METHODS))}")
    return METHODS[name]()


def missing_stats_error(key: str) -> QuantizationError:
    return QuantizationError(
        f"activation statistics have no entry {key!r}; make a statistics file for this model with `wmquant plan-act`"
    )
