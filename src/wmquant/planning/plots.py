"""Figures of one planning run: success and latent MSE by MPC iteration, and a rollout grid of real
frames against the model's decoded imagination (the paper's Fig. 2 and Fig. 3, for a single run)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .. import io as wio


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    with wio.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)


def plot_curve(values: Sequence[float], path: Path, ylabel: str, title: str, ylim: tuple[float, float] | None = None) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    iters = np.arange(1, len(values) + 1)
    ax.plot(iters, values, marker="o", markersize=3)
    ax.set_xlabel("MPC iteration")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def to_uint8_images(images) -> np.ndarray:
    """Decoder output in [-1, 1], (..., 3, H, W) tensor -> uint8 (..., H, W, 3)."""
    arr = images.detach().float().clamp(-1, 1).cpu().numpy()
    arr = np.moveaxis(arr, -3, -1)
    return np.round((arr + 1.0) * 127.5).astype(np.uint8)


def plot_rollout_grid(env_frames: np.ndarray, imagined: np.ndarray | None, goals: np.ndarray, path: Path) -> None:
    """env_frames: uint8 (E, K, H, W, 3) real frames at model steps; imagined: uint8 (E, K', h, w, 3)
    decoded predictions (or None without a decoder); goals: uint8 (E, H, W, 3). Two rows per episode."""
    plt = _pyplot()
    episodes, steps = env_frames.shape[:2]
    cols = max(steps, imagined.shape[1] if imagined is not None else 0) + 1
    rows = episodes * (2 if imagined is not None else 1)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for e in range(episodes):
        r = e * (2 if imagined is not None else 1)
        for t in range(steps):
            axes[r, t].imshow(env_frames[e, t])
        axes[r, cols - 1].imshow(goals[e])
        axes[r, 0].set_title("env", fontsize=7, loc="left")
        axes[r, cols - 1].set_title("goal", fontsize=7)
        if imagined is not None:
            for t in range(imagined.shape[1]):
                axes[r + 1, t].imshow(imagined[e, t])
            axes[r + 1, 0].set_title("model", fontsize=7, loc="left")
    save_figure(fig, path)
