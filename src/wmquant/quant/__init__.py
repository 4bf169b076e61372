"""Post-training quantization of world models: quantization as data, applied to an unmodified model.

    from wmquant.quant import QuantConfig, QuantScheme, calibrate_and_quantize
    qconfig = QuantConfig.uniform(w_bits=4, a_bits=8, w_group_size=128)
    report = calibrate_and_quantize(model, "smoothquant", qconfig, run_calibration, act_stats=stats)

Layout: `qmath` (all arithmetic), `config`, `layers`, `api` (quantize_ and friends), `recorders`
(what calibration records), `calibration` (the pipeline), `recipes` (method names, one registry),
`legacy` (the seed README's method flags), `stats` (plan-act statistics), `methods/` (registered methods).
"""

from .api import freeze_, observe_activations, quant_summary, quantize_, resolve_targets, set_quantization_
from .calibration import calibrate_and_quantize
from .recorders import BlockInputRecorder, CalibrationData, LinearInputRecorder
from .config import DEFAULT_TARGETS, TARGET_PRESETS, QuantConfig, QuantConfigError, QuantScheme
from .layers import ActQuantizer, QuantConv1d, QuantConv2d, QuantLinear, WeightQParams, WeightQuantizer
from .methods import METHODS, get_method, register_method
from .stats import ActStatsRecorder, load_act_stats, save_act_stats

__all__ = [
    "ActQuantizer", "ActStatsRecorder", "BlockInputRecorder", "CalibrationData", "DEFAULT_TARGETS",
    "LinearInputRecorder", "METHODS", "QuantConfig", "QuantConfigError", "QuantConv1d", "QuantConv2d",
    "QuantLinear", "QuantScheme", "TARGET_PRESETS", "WeightQParams", "WeightQuantizer", "calibrate_and_quantize",
    "freeze_", "get_method", "load_act_stats", "observe_activations", "quant_summary", "quantize_",
    "register_method", "resolve_targets", "save_act_stats", "set_quantization_",
]
