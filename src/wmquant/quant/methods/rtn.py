"""RTN: round-to-nearest with minmax scales, nothing else (the study's baseline)."""

from __future__ import annotations

from torch import nn

from ..recorders import CalibrationData
from ..config import QuantConfig
from .base import MethodResult, NoOptions, PTQMethod, register_method


@register_method("rtn")
class RTN(PTQMethod):
    display_name = "RTN"
    supports_float_formats = True
    """Weights: minmax per channel or group (the scheme's observer). Activations: the scheme's
    observer, per tensor (calibrated) or per token (dynamic)."""

    options = NoOptions

    def transform(self, model: nn.Module, qconfig: QuantConfig, calib: CalibrationData, options: NoOptions) -> MethodResult:
        return MethodResult()
