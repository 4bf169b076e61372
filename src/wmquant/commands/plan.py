"""`wmquant plan`, `wmquant plan-act`, `wmquant quant` and `wmquant ceiling`: the original study's
planning commands, with its Hydra keys (the runs themselves are `wmquant.planning.runs`)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..planning.results import run_label, success_table
from ..planning.runs import compose_plan_config, run_ceiling_plan, run_plan, run_plan_act, run_quant


def _explicit(overrides: Sequence[str], key: str) -> bool:
    return any(o.lstrip("+~").split("=", 1)[0] == key for o in overrides)


def print_result(label: str, result: dict, run_dir: Path) -> None:
    print(success_table({label: result["success_rate_by_iter"]}))
    bits = (result.get("quant") or {}).get("avg_bits_per_weight") or {}
    if bits:
        print("average bits per weight: " + ", ".join(f"{k} {v:.2f}" for k, v in bits.items()))
    breakdown = result.get("failure_breakdown")
    if breakdown:
        print(failure_summary(breakdown))
    print(f"wrote {run_dir / 'result.json'} ({result['wall_seconds']:.1f} s)")


def failure_summary(breakdown: dict) -> str:
    """Two lines: which part of the success test the unsolved episodes fail, and success split by
    whether the goal needs the block pushed."""
    def rate(value):
        return "n/a" if value is None else f"{value:.2f}"

    n = len(breakdown["agent_error_px"])
    return (
        f"unsolved {breakdown['failed']} of {n}: position only {breakdown['position_only']}, angle only "
        f"{breakdown['angle_only']}, both {breakdown['position_and_angle']} (position errors led by the block "
        f"{breakdown['position_block_dominant']}, by the agent {breakdown['position_agent_dominant']})\n"
        f"success on the {breakdown['needs_push']} goals that need the block pushed (>= 5 px): "
        f"{rate(breakdown['success_rate_needs_push'])}; on the other {n - breakdown['needs_push']}: {rate(breakdown['success_rate_no_push'])}"
    )


def plan_command(config_name: str | None, overrides: Sequence[str]) -> int:
    cfg = compose_plan_config(config_name, overrides)
    result, run_dir = run_plan(cfg)
    print_result(f"{cfg.model_name} {run_label(result)}", result, run_dir)
    return 0


def plan_act_command(config_name: str | None, overrides: Sequence[str]) -> int:
    cfg = compose_plan_config(config_name, overrides)
    path = run_plan_act(cfg)
    print(f"wrote activation statistics {path}")
    return 0


def quant_command(config_name: str | None, overrides: Sequence[str]) -> int:
    overrides = list(overrides)
    # `wmquant quant` quantizes both parts unless told otherwise (the seed README always passes both).
    for key in ("quant", "quant_encoder"):
        if not _explicit(overrides, key):
            overrides.append(f"{key}=true")
    cfg = compose_plan_config(config_name, overrides)
    result, run_dir = run_quant(cfg)
    print_result(f"{cfg.model_name} {run_label(result)}", result, run_dir)
    return 0


def ceiling_command(config_name: str | None, overrides: Sequence[str]) -> int:
    cfg = compose_plan_config(config_name, overrides)
    result, run_dir = run_ceiling_plan(cfg)
    print_result(f"{cfg.env} ceiling", result, run_dir)
    return 0
