"""`wmquant models`: the world models shipped with wmquant."""

from __future__ import annotations

from typing import Sequence

from ..models.checkpoint import shipped_model_descriptions
from . import flag_parser


def models_main(argv: Sequence[str]) -> int:
    """One line per shipped model (name, env, resolution, encoder, predictor)."""
    parser = flag_parser("wmquant models", "List the world models shipped with wmquant; load one with model_name=NAME.")
    parser.parse_args(list(argv))
    models = shipped_model_descriptions()
    if not models:
        print("no shipped models")
    for name, description in models:
        print(f"{name}: {description}")
    return 0
