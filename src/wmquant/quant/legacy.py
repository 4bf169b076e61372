"""The original study's method flags, in one compatibility table.

The seed README chooses a method with `w_quant_method` (and `a_quant_method` for the activation
observer) and keeps `method=fp`; wmquant names the method directly (`method=awq`). This table maps
between the two, so that the README's commands and a study spec's runs carry the same flags. A
method registered without an entry here gets the README's defaults (minmax, minmax).
"""

from __future__ import annotations

from .recipes import FLOAT, method_chain

#: w_quant_method -> the registered method it selects when method=fp (the README's way).
W_QUANT_METHOD_TO_METHOD = {"minmax": "rtn", "omse": "omse", "awq": "awq", "omniquant": "omniquant", "gptq": "gptq"}
#: a_quant_method -> the activation observer. QuantWM's observer registry maps awq and omniquant to
#: min/max (spec quantwm.md section 2).
A_QUANT_METHOD_TO_OBSERVER = {"minmax": "minmax", "omse": "omse", "awq": "minmax", "omniquant": "minmax"}
#: method -> (w_quant_method, a_quant_method) as the README's commands pass them (spec quantwm.md section 10).
METHOD_FLAGS = {
    "rtn": ("minmax", "minmax"),
    "omse": ("omse", "minmax"),
    "smoothquant": ("minmax", "minmax"),
    "awq": ("awq", "minmax"),
    "omniquant": ("omniquant", "omniquant"),
    "gptq": ("gptq", "minmax"),
}
DEFAULT_FLAGS = ("minmax", "minmax")


def legacy_flags(method: str) -> dict[str, str]:
    """The README's flags of a recipe: those of the method that sets its weights (the last)."""
    if method == FLOAT:
        return {}
    w, a = METHOD_FLAGS.get(method_chain(method)[-1], DEFAULT_FLAGS)
    return {"w_quant_method": w, "a_quant_method": a}
