"""A stand-in for wmquant.study.runner.run_one: a deterministic result.json from the overrides.

It exercises the store, resume and launcher mechanics without planning. Environment variables
steer it from tests (they reach subprocesses and submitit jobs too):
  FAKE_RUNNER_LOG    append "start <run_id> cuda=<CUDA_VISIBLE_DEVICES>" / "done <run_id>" lines here
  FAKE_RUNNER_SLEEP  seconds to sleep before writing, and again halfway through writing result.json
  FAKE_RUNNER_FAIL   run ids containing this text raise instead of writing a result
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Mapping

from wmquant.io import atomic_path
from wmquant.study.spec import CALIB_MODES, short_hash

# Success probability after many iterations by the lowest bit width involved (16 = float).
_CEILING = {16: 0.94, 8: 0.92, 6: 0.8, 4: 0.5, 3: 0.1, 2: 0.0}


def _log(line: str) -> None:
    path = os.environ.get("FAKE_RUNNER_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def quant_section(overrides: Mapping[str, Any]) -> dict | None:
    if overrides["method"] == "fp":
        return None
    group = overrides.get("W_GROUP_SIZE", -1)

    def scheme(prefix: str) -> dict:
        return {"w_bits": overrides.get(f"{prefix}_wbit", 16), "a_bits": overrides.get(f"{prefix}_abit", 16),
                "w_group_size": None if group == -1 else group,
                "a_granularity": CALIB_MODES[overrides.get("calib_mode_a", "layer_wise")],
                "w_format": overrides.get("w_format", "int"), "a_format": overrides.get("a_format", "int")}

    return {"method": overrides["method"], "quant_encoder": overrides.get("quant_encoder", True),
            "encoder": scheme("encoder"), "predictor": scheme("predictor"),
            "avg_bits_per_weight": {"encoder": 8.0, "predictor": 8.0}, "options": {}}


def nested_config(overrides: Mapping[str, Any]) -> dict:
    """Dotted override keys as the nested mapping a resolved config has ("engine.backend" ->
    {"engine": {"backend": ...}})."""
    config: dict[str, Any] = {}
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return config


def build_result(overrides: Mapping[str, Any], run_id: str,
                 success_by_iter: list[list[int]] | None = None) -> dict:
    """A schema-valid result; outcomes derived from the overrides unless given."""
    n_evals = overrides.get("n_evals", 50)
    iterations = overrides.get("planner.max_iter", 50 if overrides.get("env", "wall") == "wall" else 30)
    if success_by_iter is None:
        bits = [overrides.get(k, 16) for k in ("encoder_wbit", "encoder_abit", "predictor_wbit", "predictor_abit")]
        ceiling = _CEILING[min(bits)] if overrides["method"] != "fp" else _CEILING[16]
        episode_difficulty = [random.Random(episode).random() for episode in range(n_evals)]
        jitter = random.Random(short_hash(dict(overrides)))
        success_by_iter = []
        for k in range(iterations):
            reach = ceiling * (1.0 - 0.5 * math.exp(-k / 3.0))
            success_by_iter.append([int(d + 0.02 * jitter.random() < reach) for d in episode_difficulty])
    n_evals = len(success_by_iter[0])
    rates = [sum(row) / n_evals for row in success_by_iter]
    return {
        "schema": "wmquant.result/1", "run_id": run_id, "env": overrides.get("env", "wall"),
        "model": overrides.get("model_name", "wall"), "method": overrides["method"],
        "quant": quant_section(overrides), "n_evals": n_evals,
        "eval_seeds": [99 * i + 1 for i in range(n_evals)],
        "calibration_seeds": None if overrides["method"] == "fp" else [99 * i + 2 for i in range(n_evals)],
        "success_rate_by_iter": rates, "success_by_iter": success_by_iter,
        "latent_mse_by_iter": [1.0 / (k + 1) + (1.0 - rate) for k, rate in enumerate(rates)],
        "planning_loss_by_iter": [2.0 / (k + 1) + (1.0 - rate) for k, rate in enumerate(rates)],
        "wall_seconds": 0.01, "config": nested_config(overrides), "tag": overrides.get("tag", run_id),
        "created": "2026-01-01T00:00:00+00:00", "wmquant_version": "0.1.0",
    }


def run_one(overrides: dict[str, Any], run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    run_id = run_dir.name
    _log(f"start {run_id} cuda={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}")
    failing = os.environ.get("FAKE_RUNNER_FAIL")
    if failing and failing in run_id:
        raise RuntimeError(f"planned failure of {run_id}")
    pause = float(os.environ.get("FAKE_RUNNER_SLEEP", "0"))
    time.sleep(pause)
    result = build_result(overrides, run_id)
    text = json.dumps(result)
    with atomic_path(run_dir / "result.json") as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text[: len(text) // 2])
            fh.flush()
            time.sleep(pause)  # a kill now leaves only the temporary file
            fh.write(text[len(text) // 2:])
    _log(f"done {run_id}")
    return result


def run_invalid(overrides: dict[str, Any], run_dir: Path) -> dict:
    """A broken runner: its result.json has per-episode outcomes that contradict its rates."""
    result = build_result(overrides, Path(run_dir).name)
    result["success_rate_by_iter"] = [1.0] * len(result["success_rate_by_iter"])
    with atomic_path(Path(run_dir) / "result.json") as tmp:
        tmp.write_text(json.dumps(result))
    return result


def run_returning_only(overrides: dict[str, Any], run_dir: Path) -> dict:
    """A runner that returns its result without writing it (the sweep writes it)."""
    return build_result(overrides, Path(run_dir).name)
