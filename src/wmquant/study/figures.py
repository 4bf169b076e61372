"""Figures of the study as PNG files (matplotlib's Agg canvas; no display, no global pyplot state).

  plot_success_curves        success rate against MPC iteration, one line per method, one panel per
                             setting, Wilson 95% band; the FP baseline dashed in every panel, the
                             paper's published numbers as hollow markers
  plot_latent_mse_and_loss   latent MSE to the goal and planning loss against iteration (paper Fig. 3)
  plot_activation_outliers   per-channel max|x| of chosen layers before/after smoothing (paper Fig. 1)
  plot_rollout_grid          open-loop rollouts decoded from several models, one row each (paper Fig. 2)
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator

from ..errors import StudyError
from ..io import atomic_path
from .paper import SettingKey, engine_variant, setting_key_from_result
from .stats import wilson_interval

METHOD_COLOURS = {"fp": "black", "rtn": "tab:blue", "omse": "tab:orange", "smoothquant": "tab:green",
                  "awq": "tab:red", "omniquant": "tab:purple", "gptq": "tab:brown"}
PANEL_SIZE = (4.0, 2.8)  # inches per panel (plot area; legends sit to its right)
LOSS_PANEL_SIZE = (5.0, 3.4)  # the loss and latent panels: two per row, read side by side
LEGEND_WIDTH = 1.6  # inches added per panel for a legend outside the curves
DPI = 90
#: Line style per engine variant (engine_variant): the exact default solid, others each their own,
#: so that an engine mode of the same method is told apart from it in colour-blind print too.
VARIANT_STYLES = {"": "-", "tf32": "-.", "bf16": ":", "real kernels": (0, (6, 2, 1, 2, 1, 2)),
                  "compiled": (0, (3, 1)), "bf16, compiled": (0, (1, 1))}
OTHER_VARIANT_STYLE = (0, (4, 2, 1, 2))


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    FigureCanvasAgg(figure)
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return path


def _grid(n_panels: int, ncols: int) -> tuple[Figure, list]:
    ncols = max(1, min(ncols, n_panels))
    nrows = math.ceil(n_panels / ncols)
    figure = Figure(figsize=((PANEL_SIZE[0] + LEGEND_WIDTH) * ncols, PANEL_SIZE[1] * nrows), layout="constrained")
    axes = [figure.add_subplot(nrows, ncols, i + 1) for i in range(n_panels)]
    return figure, axes


def group_by_setting(results: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping], "OrderedDict[tuple, list]"]:
    """(FP baseline results, {SettingKey.setting (the key without method) -> quantized results}) in input order."""
    baselines, groups = [], OrderedDict()
    for result in results:
        key = setting_key_from_result(result)
        if key.method == "fp":
            baselines.append(result)
        else:
            groups.setdefault(key.setting, []).append(result)
    return baselines, groups


def _style_iteration_axis(axis) -> None:
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.tick_params(labelsize=8)
    axis.grid(alpha=0.3)


def _legend_outside(axis) -> None:
    """The legend to the right of the panel, where it hides no curve."""
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)


def line_style(result: Mapping[str, Any], baseline: bool = False):
    """FP's exact run dashed; every engine variant its own style; quantized exact runs solid."""
    variant = engine_variant(result)
    if baseline and not variant:
        return "--"
    return VARIANT_STYLES.get(variant, OTHER_VARIANT_STYLE)


def _label(result: Mapping[str, Any]) -> str:
    name = "FP" if result["method"] == "fp" else result["method"]
    variant = engine_variant(result)
    return f"{name} ({variant})" if variant else name


def _success_line(axis, result: Mapping[str, Any], style, paper: Mapping[int, float] | None = None) -> None:
    outcomes = result["success_by_iter"]
    iterations = np.arange(1, len(outcomes) + 1)
    rates = np.array([sum(row) / len(row) for row in outcomes])
    bands = np.array([wilson_interval(int(sum(row)), len(row)) for row in outcomes])
    colour = METHOD_COLOURS.get(result["method"], None)
    axis.plot(iterations, rates, linestyle=style, color=colour, label=_label(result), linewidth=1.5)
    axis.fill_between(iterations, bands[:, 0], bands[:, 1], color=colour, alpha=0.12, linewidth=0)
    if paper:
        # the paper's "k iters" column is the success after MPC iteration max(k, 1)
        columns = sorted(paper)
        axis.plot([max(k, 1) for k in columns], [paper[k] for k in columns], linestyle="none", marker="D",
                  markersize=4, markerfacecolor="none", markeredgecolor=colour, label=f"{_label(result)}, paper")


def plot_success_curves(results: Sequence[Mapping[str, Any]], path: str | os.PathLike, ncols: int = 4,
                        paper: Mapping[str, Mapping[int, float]] | None = None) -> Path:
    """Success rate after each MPC iteration (x = 1..max_iter), one panel per setting, one line
    per method, shaded Wilson 95% interval; FP baseline(s) dashed in every panel; engine variants
    in their own line styles; legends outside the curves.
    paper: run_id -> {k: the paper's success in its "k iters" column}, drawn as hollow diamonds."""
    return _save(success_figure(results, ncols, paper), path)


def success_figure(results: Sequence[Mapping[str, Any]], ncols: int = 4,
                   paper: Mapping[str, Mapping[int, float]] | None = None) -> Figure:
    """The figure of `plot_success_curves`, unsaved."""
    if not results:
        raise StudyError("plot_success_curves needs at least one result")
    paper = paper or {}
    baselines, groups = group_by_setting(results)
    panels = list(groups.items()) or [(None, [])]
    figure, axes = _grid(len(panels), ncols)
    for axis, (setting, members) in zip(axes, panels):
        for baseline in baselines:
            # the paper's FP numbers once per figure would be lost in a grid; draw them in every panel
            _success_line(axis, baseline, line_style(baseline, baseline=True),
                          paper.get(baseline["run_id"]) if not engine_variant(baseline) else None)
        for result in members:
            _success_line(axis, result, line_style(result), paper.get(result["run_id"]))
        axis.set_title(SettingKey("q", *setting).label() if setting else "FP", fontsize=9)
        axis.set_ylim(-0.02, 1.02)
        axis.set_xlabel("MPC iteration", fontsize=8)
        axis.set_ylabel("success rate", fontsize=8)
        _style_iteration_axis(axis)
        _legend_outside(axis)
    note = "; hollow diamonds: the paper's numbers" if any(paper.values()) else ""
    figure.suptitle(f"Success rate against planning iterations (band: Wilson 95%{note})", fontsize=10)
    return figure


def plot_latent_mse_and_loss(results: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Latent MSE to the goal (left) and planning loss (right) against MPC iteration, one row per
    setting, one line per method, FP dashed (the paper's Fig. 3). Log scale when all positive."""
    if not results:
        raise StudyError("plot_latent_mse_and_loss needs at least one result")
    baselines, groups = group_by_setting(results)
    rows = list(groups.items()) or [(None, [])]
    width, height = LOSS_PANEL_SIZE
    figure = Figure(figsize=((width + LEGEND_WIDTH) * 2, height * len(rows)), layout="constrained")
    series = (("latent_mse_by_iter", "latent MSE to goal"), ("planning_loss_by_iter", "planning loss"))
    for row, (setting, members) in enumerate(rows):
        for col, (key, name) in enumerate(series):
            axis = figure.add_subplot(len(rows), 2, 2 * row + col + 1)
            values_seen = []
            for result, style in ([(b, line_style(b, baseline=True)) for b in baselines]
                                  + [(m, line_style(m)) for m in members]):
                values = np.asarray(result.get(key) or [], dtype=float)
                if values.size:
                    axis.plot(np.arange(1, values.size + 1), values, linestyle=style, label=_label(result),
                              color=METHOD_COLOURS.get(result["method"]), linewidth=1.5)
                    values_seen.append(values)
            if values_seen and all(np.all(v[np.isfinite(v)] > 0) for v in values_seen):
                axis.set_yscale("log")
                # labels at 2x and 5x each decade too: these curves often span less than one decade
                axis.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
                axis.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))
                axis.tick_params(axis="y", which="minor", labelsize=7)
            if not values_seen:
                axis.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=axis.transAxes)
            axis.set_title(f"{SettingKey('q', *setting).label() if setting else 'FP'}: {name}", fontsize=10)
            axis.set_xlabel("MPC iteration", fontsize=9)
            axis.set_ylabel(name + (" (log scale)" if axis.get_yscale() == "log" else ""), fontsize=9)
            _style_iteration_axis(axis)
            if values_seen:
                _legend_outside(axis)
    return _save(figure, path)


def _channel_maxima(values: Any, name: str) -> np.ndarray:
    array = values.detach().cpu().numpy() if hasattr(values, "detach") else np.asarray(values)
    array = np.abs(array.astype(np.float64))
    if array.ndim > 1:
        array = array.reshape(-1, array.shape[-1]).max(axis=0)
    if array.size == 0 or not np.all(np.isfinite(array)):
        raise StudyError(f"activation statistics of {name} are empty or not finite")
    return array


def plot_activation_outliers(stats_before: Mapping[str, Any], stats_after: Mapping[str, Any],
                             layers: Sequence[str], path: str | os.PathLike) -> Path:
    """Bars of per-input-channel max|x| for each layer (rows), before and after smoothing
    (columns), as in the paper's Fig. 1. Statistics are 1-D (channels,) tensors or arrays as
    `wmquant plan-act` saves them; larger arrays are reduced to max|x| over all but the last axis."""
    if not layers:
        raise StudyError("plot_activation_outliers needs at least one layer name")
    for stats, which in ((stats_before, "before"), (stats_after, "after")):
        missing = [name for name in layers if name not in stats]
        if missing:
            raise StudyError(f"no {which}-smoothing statistics for layer {missing[0]!r}; "
                             f"available: {', '.join(sorted(stats)[:20])}")
    figure = Figure(figsize=(PANEL_SIZE[0] * 2.4, PANEL_SIZE[1] * len(layers)), layout="constrained")
    for row, name in enumerate(layers):
        before, after = _channel_maxima(stats_before[name], name), _channel_maxima(stats_after[name], name)
        top = max(before.max(), after.max()) * 1.05
        for col, (values, which) in enumerate(((before, "before smoothing"), (after, "after smoothing"))):
            axis = figure.add_subplot(len(layers), 2, 2 * row + col + 1)
            # vlines, not bars: a one-channel spike must stay visible at any channel count.
            colour = "tab:blue" if col == 0 else "tab:green"
            axis.vlines(np.arange(values.size), 0.0, values, linewidth=0.8, color=colour)
            ratio = values.max() / max(np.median(values), 1e-12)
            axis.set_title(f"{name} ({which}); max/median {ratio:.1f}", fontsize=8)
            axis.set_ylim(0, top)
            axis.set_xlabel("input channel", fontsize=8)
            axis.set_ylabel("max |x|", fontsize=8)
            axis.tick_params(labelsize=7)
    return _save(figure, path)


def plot_rollout_grid(rows: Mapping[str, Any], path: str | os.PathLike,
                      frame_labels: Sequence[str] | None = None, title: str | None = None) -> Path:
    """Open-loop rollouts as an image grid: one row per model (label -> uint8 frames (T, H, W, 3)),
    one column per time step (the paper's Fig. 2). Rows may differ in length; gaps stay blank.
    title: above the grid (which episode, which actions)."""
    if not rows:
        raise StudyError("plot_rollout_grid needs at least one row of frames")
    checked = {}
    for label, frames in rows.items():
        array = np.asarray(frames)
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] == 0:
            raise StudyError(f"rollout row {label!r} must be uint8 frames of shape (T, H, W, 3), "
                             f"got {array.dtype} {tuple(array.shape)}")
        checked[label] = array
    steps = max(a.shape[0] for a in checked.values())
    figure = Figure(figsize=(1.3 * steps + 1.2, 1.4 * len(checked)))
    for row, (label, frames) in enumerate(checked.items()):
        for t in range(steps):
            axis = figure.add_subplot(len(checked), steps, row * steps + t + 1)
            axis.set_xticks([])
            axis.set_yticks([])
            if t < frames.shape[0]:
                axis.imshow(frames[t], interpolation="nearest")
            else:
                axis.axis("off")
            if row == 0:
                axis.set_title(frame_labels[t] if frame_labels and t < len(frame_labels) else f"t={t}", fontsize=8)
            if t == 0:
                axis.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    if title:
        figure.suptitle(title, fontsize=9)
    return _save(figure, path)
