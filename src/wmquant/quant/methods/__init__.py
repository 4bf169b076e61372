"""The registry of PTQ methods. Each method is one file here, registered with `@register_method`.

    from wmquant.quant.methods import get_method, METHODS
    get_method("awq").make_options({"n_grid": 20})

To add a method: write `methods/<name>.py` with a `PTQMethod` subclass decorated with
`@register_method("<name>")`, and import it below.
"""

from .base import METHODS, MethodResult, PTQMethod, Requirements, get_method, register_method
from . import awq, gptq, mixed, omniquant, omse, rollout, rotate, rtn, smoothquant  # noqa: F401  (registration)

__all__ = ["METHODS", "MethodResult", "PTQMethod", "Requirements", "get_method", "register_method"]
