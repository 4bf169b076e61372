"""Names of PTQ recipes, read from the one registry of methods (`wmquant.quant.methods.METHODS`).

A recipe is one registered method ("awq") or several applied in order ("smoothquant+gptq",
written `method=[smoothquant,gptq]` in a config or a study spec). The CLI, study specs, the results
store, reports and figures all validate and print recipes through this module, so a method that is
registered is known everywhere at once.
"""

from __future__ import annotations

from typing import Any, Sequence

from .config import QuantConfigError

SEPARATOR = "+"
FLOAT = "fp"  # the unquantized baseline: a study row, not a registered method


def method_chain(method: str | Sequence[str]) -> list[str]:
    """A recipe as the list of its methods: "awq", ["smoothquant", "gptq"] or "smoothquant+gptq"."""
    if isinstance(method, str):
        names = method.split(SEPARATOR)
    elif isinstance(method, Sequence) and not isinstance(method, (bytes, bytearray)):
        names = [str(m) for m in method]
    else:
        raise QuantConfigError(f"method must be a name or a list of names, got {method!r}")
    names = [n.strip() for n in names]
    if not names or any(not n for n in names):
        raise QuantConfigError(f"method {method!r} names an empty method; give e.g. rtn or [smoothquant, gptq]")
    return names


def recipe_name(method: str | Sequence[str]) -> str:
    """The recipe's name in results and reports: "awq", "smoothquant+gptq"."""
    return SEPARATOR.join(method_chain(method))


def registered() -> list[str]:
    from .methods import METHODS

    return sorted(METHODS)


def check_recipe(method: Any, allow_float: bool = False) -> str:
    """The canonical name of a recipe whose every method is registered ("fp" too if allowed);
    QuantConfigError naming the unknown method and the valid ones otherwise."""
    if allow_float and method == FLOAT:
        return FLOAT
    chain = method_chain(method)
    if FLOAT in chain and len(chain) > 1:
        raise QuantConfigError(f"{FLOAT} cannot be part of a recipe ({recipe_name(chain)})")
    valid = registered()
    for name in chain:
        if name not in valid:
            choices = ([FLOAT] if allow_float else []) + valid
            raise QuantConfigError(f"unknown method {name!r}; valid: {', '.join(choices)}, or a list of them "
                                   "applied in order (e.g. [smoothquant, gptq])")
    return recipe_name(chain)


def display_name(method: str) -> str:
    """How reports print a recipe: "FP32", "RTN", "SmoothQuant+GPTQ"; unregistered names as they are."""
    from .methods import METHODS

    if method == FLOAT:
        return "FP32"
    return SEPARATOR.join((METHODS[m].display_name or m) if m in METHODS else m for m in method_chain(method))
