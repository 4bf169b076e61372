"""The study's unit of work: one planning run (FP, or calibrate + quantize + plan) from overrides.

`run_one(overrides, run_dir)` composes `plan_<env>.yaml` with the seed README's keys, runs it with
`run_dir` as its output directory, and returns the result; `result.json` is written atomically by
the planning code, so a killed run leaves no result behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from omegaconf import OmegaConf


def hydra_overrides(base, overrides: Mapping[str, Any]) -> list[str]:
    """key=value strings for Hydra; keys the config does not have yet get a leading '+'."""
    items = []
    for key, value in overrides.items():
        text = json.dumps(value) if isinstance(value, (str, bool, list)) or value is None else str(value)
        if isinstance(value, bool):
            text = "true" if value else "false"
        if value is None:
            text = "null"
        exists = OmegaConf.select(base, key, default="__missing__") != "__missing__"
        items.append(f"{'' if exists else '+'}{key}={text}")
    return items


def compose_run_config(overrides: Mapping[str, Any], run_dir: str | Path | None = None):
    from ..configs import compose_config

    env = str(overrides.get("env", "wall"))
    base = compose_config(f"plan_{env}", [])
    items = hydra_overrides(base, {k: v for k, v in overrides.items() if k != "env"})
    if run_dir is not None:
        items.append(f"output_dir={json.dumps(str(run_dir))}")
        if "tag" not in overrides:
            # plan_base's tag is "fp"; a study run is labelled by its run id instead, so that
            # result.json's tag says which run it is (an OmniQuant run tagged "fp" misleads)
            items.append(f"tag={json.dumps(Path(run_dir).name)}")
    return compose_config(f"plan_{env}", items)


def run_one(overrides: Mapping[str, Any], run_dir: str | Path) -> dict:
    from ..planning.runs import run_from_config

    cfg = compose_run_config(overrides, run_dir)
    result, _ = run_from_config(cfg, progress=False)
    return result
