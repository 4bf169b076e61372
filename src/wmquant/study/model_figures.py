"""Figures of a sweep that need more than result.json: the paper's Fig. 1 (activation outliers per
channel before and after smoothing, from plan-act statistics and the model's weights) and Fig. 2
(open-loop rollouts decoded from the FP and the quantized models under one action sequence, from
each run's `open_loop.npz`). They are written to SWEEP_DIR/figures/, which the report embeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .figures import plot_activation_outliers, plot_rollout_grid
from .paper import paper_bits
from .report import method_label

OPEN_LOOP_FILE = "open_loop.npz"


def rollout_label(result: Mapping[str, Any]) -> str:
    """A rollout row's label with both parts' bits, as the paper's tables print them (32 = float):
    "FP", "RTN: encoder W4A4 / predictor W8A8 (G128, per-token)"."""
    quant = result.get("quant")
    if not quant:
        return "FP"
    method = method_label(result["method"])

    def bits(part: str) -> str:
        scheme = quant[part]
        on = quant.get(f"quant_{part}", True)
        w, a = (scheme["w_bits"], scheme["a_bits"]) if on else (16, 16)
        return f"{part} W{paper_bits(w)}A{paper_bits(a)}"

    predictor = quant["predictor"]
    extras = [f"G{predictor['w_group_size']}"] if predictor.get("w_group_size") else []
    if predictor["a_bits"] < 16 and predictor.get("a_granularity") == "per_token":
        extras.append("per-token")
    suffix = f" ({', '.join(extras)})" if extras else ""
    return f"{method}: {bits('encoder')} / {bits('predictor')}{suffix}"


def open_loop_rows(sweep_dir: Path, results: Sequence[Mapping[str, Any]]) -> tuple[dict[str, np.ndarray], int | None]:
    """({"env": real frames, "FP": imagined, "<rollout label>": imagined, ...}, the episode's seed)
    from runs with open_loop.npz. Every run of a sweep rolls out the same episode and actions."""
    rows: dict[str, np.ndarray] = {}
    episode = None
    ordered = sorted(results, key=lambda r: r.get("quant") is not None)  # FP first
    for result in ordered:
        path = Path(sweep_dir) / "runs" / str(result["run_id"]) / OPEN_LOOP_FILE
        if not path.is_file():
            continue
        with np.load(path) as data:
            if "env" not in rows:
                rows["env"] = data["env_frames"]
                episode = int(data["episode_seed"]) if "episode_seed" in data else None
            label = rollout_label(result)
            while label in rows:
                label += "'"
            rows[label] = data["imagined_frames"]
    return rows, episode


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
    from ..planning.runs import act_stats_path
    from ..quant.stats import load_act_stats

    out: dict[str, Path] = {}
    figures = Path(sweep_dir) / "figures"
    rows, episode = open_loop_rows(Path(sweep_dir), results)
    if len(rows) > 1:
        env = results[0].get("env", "")
        where = f"{env} evaluation episode with env seed {episode}" if episode is not None else f"first {env} evaluation episode"
        title = (f"Open-loop rollouts decoded from each model, from the start of the {where}, under one fixed "
                 "random action sequence (top row: the environment)")
        out["rollouts_open_loop"] = plot_rollout_grid(rows, figures / "rollouts_open_loop.png", title=title)
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
