"""Real low-bit kernels: INT8 GEMMs (W8A8), FP8 E4M3 GEMMs (FP8 W8A8) and packed INT4 weight-only
matmuls (W4A16), the module swap that turns a calibrated fake-quant model into one that runs them,
and real quantized checkpoints (`wmquant export`)."""

from .export import export_quantized, load_real_quantized
from .real import apply_engine_backend_, check_engine_backend, check_real_config, real_weight_bytes, to_real_backend_

__all__ = [
    "apply_engine_backend_",
    "check_engine_backend",
    "check_real_config",
    "export_quantized",
    "load_real_quantized",
    "real_weight_bytes",
    "to_real_backend_",
]
