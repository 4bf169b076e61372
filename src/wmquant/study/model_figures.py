"""Figures of a sweep that need more than result.json: the paper's Fig. 1 (activation outliers per
channel before and after smoothing, from plan-act statistics and the model's weights) and Fig. 2
(open-loop rollouts decoded from the FP and the quantized models under one action sequence, from
each run's `open_loop.npz`). They are written to SWEEP_DIR/figures/, which the report embeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..planning.results import run_label
from .figures import plot_activation_outliers, plot_rollout_grid

OPEN_LOOP_FILE = "open_loop.npz"


def open_loop_rows(sweep_dir: Path, results: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """{"env": real frames, "FP": imagined, "<run label>": imagined, ...} from runs with open_loop.npz."""
    rows: dict[str, np.ndarray] = {}
    ordered = sorted(results, key=lambda r: r.get("quant") is not None)  # FP first
    for result in ordered:
        path = Path(sweep_dir) / "runs" / str(result["run_id"]) / OPEN_LOOP_FILE
        if not path.is_file():
            continue
        with np.load(path) as data:
            if "env" not in rows:
                rows["env"] = data["env_frames"]
            label = run_label(result)
            while label in rows:
                label += "'"
            rows[label] = data["imagined_frames"]
    return rows


def smoothed_stats(model, act_stats: Mapping[str, Any], alpha: float = 0.5) -> dict[str, Any]:
    """max|x| per channel after SmoothQuant's norm->Linear folding: max|x_j| / s_j for every qkv and
    fc1 input (the pairs SmoothQuant smooths); other layers unchanged."""
    from ..quant.methods._equivalence import NORM_LINEAR_PAIRS, smoothquant_scale

    after = dict(act_stats)
    for part in ("encoder", "predictor"):
        for i, block in enumerate(getattr(model, part).blocks):
            for _, linear_name in NORM_LINEAR_PAIRS:
                name = f"{part}.blocks.{i}.{linear_name}"
                if name in act_stats:
                    linear = block.get_submodule(linear_name)
                    stats = act_stats[name]
                    after[name] = stats / smoothquant_scale(stats, linear.weight, alpha).to(stats)
    return after


def outlier_layers(model) -> list[str]:
    names = []
    for part in ("encoder", "predictor"):
        last = len(getattr(model, part).blocks) - 1
        names += [f"{part}.blocks.0.attn.qkv", f"{part}.blocks.{last}.mlp.fc1"]
    return names


def write_model_figures(sweep_dir: Path, results: Sequence[Mapping[str, Any]]) -> dict[str, Path]:
    """Write the figures that can be made for this sweep; returns {name: path}. Missing inputs
    (no open_loop.npz, no statistics file) skip a figure rather than fail the report."""
    from ..models.checkpoint import load_world_model
    from ..planning.commands import act_stats_path
    from ..quant.stats import load_act_stats

    out: dict[str, Path] = {}
    figures = Path(sweep_dir) / "figures"
    rows = open_loop_rows(Path(sweep_dir), results)
    if len(rows) > 1:
        out["rollouts_open_loop"] = plot_rollout_grid(rows, figures / "rollouts_open_loop.png")
    smooth = [r for r in results if r["method"] == "smoothquant"]
    if smooth:
        from omegaconf import OmegaConf

        cfg = OmegaConf.create(smooth[0]["config"])
        path = act_stats_path(cfg)
        if path.is_file():
            model, _ = load_world_model(str(cfg.model_name))
            before = load_act_stats(path)
            alpha = float((smooth[0].get("quant") or {}).get("options", {}).get("alpha", 0.5))
            after = smoothed_stats(model, before, alpha)
            layers = [name for name in outlier_layers(model) if name in before]
            if layers:
                out["activation_outliers"] = plot_activation_outliers(before, after, layers,
                                                                      figures / "activation_outliers.png")
    return out
