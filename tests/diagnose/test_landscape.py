"""The landscape diagnostic tells a usable planning cost from an aliased one."""

from __future__ import annotations

import numpy as np
import torch

from wmquant.diagnose.landscape import wall_free_positions, wall_geodesic, wall_landscape


def dot_position_encoder(frames: np.ndarray) -> torch.Tensor:
    """Latent = the dot's (x, y): a perfect metric encoder for Wall (Euclidean, not geodesic)."""
    f = torch.as_tensor(frames).float()
    redness = (f[..., 0] - f[..., 1]).clamp(min=0) ** 4
    ys, xs = torch.arange(65.0)[:, None], torch.arange(65.0)[None, :]
    mass = redness.sum(dim=(1, 2))
    pos = torch.stack([(redness * xs).sum((1, 2)) / mass, (redness * ys).sum((1, 2)) / mass], -1)
    return pos[:, None, :]


def patch_grid_encoder(frames: np.ndarray) -> torch.Tensor:
    """Latent = which 16-px cell holds the dot, one-hot: flat inside a cell, saturated across cells."""
    pos = dot_position_encoder(frames)[:, 0]
    cell = (pos // 16).long().clamp(0, 3)
    onehot = torch.zeros(len(pos), 16)
    onehot[torch.arange(len(pos)), cell[:, 1] * 4 + cell[:, 0]] = 1.0
    return onehot[:, None, :]


def test_geodesic_goes_through_the_door():
    points = np.array([[20.0, 30.0], [44.0, 30.0], [20.0, 10.0], [44.0, 10.0]])
    dist = wall_geodesic(points, np.array([[20.0, 30.0]]), 32, 30)[0]
    assert dist[0] == 0.0
    assert abs(dist[1] - 24.0) < 0.5  # straight through the open door
    assert abs(dist[2] - 20.0) < 0.5  # same side
    # behind the wall: longer than the straight line, close to the path around the door's corner
    straight = np.hypot(24, 20)
    around = np.hypot(35 - 20, 26 - 30) + np.hypot(44 - 35, 10 - 26)
    assert dist[3] > straight + 1 and abs(dist[3] - around) / around < 0.04


def test_free_positions_avoid_the_wall():
    pos = wall_free_positions(32, 30)
    in_band = np.abs(pos[:, 0] - 32) <= 3.5
    assert not np.any(in_band & (np.abs(pos[:, 1] - 30) > 4))
    assert pos.min() > 4 and pos.max() < 60


def test_metric_encoder_has_a_clean_landscape(tmp_path):
    report = wall_landscape(dot_position_encoder, n_goals=6, figure=tmp_path / "map.png", maps=2)
    assert report.spearman_euclidean > 0.99
    assert report.false_minima == 0
    assert (tmp_path / "map.png").stat().st_size > 1000


def test_aliased_encoder_is_flagged():
    report = wall_landscape(patch_grid_encoder, n_goals=6)
    assert report.spearman_euclidean < 0.8
    assert report.false_minima >= 1


# ---- PushT: position, angle and joint sweeps ----------------------------------------------------


def pixel_encoder(frames: np.ndarray) -> torch.Tensor:
    """Latent = the frame itself: sees the block's position and angle."""
    return torch.as_tensor(frames).float().flatten(1)[:, None, :] / 255.0


def agent_only_encoder(frames: np.ndarray) -> torch.Tensor:
    """Latent = where the RoyalBlue agent is: blind to the block (the sweeps hold the agent fixed)."""
    f = torch.as_tensor(frames).float()
    blue = ((f[..., 2] - f[..., 0]) > 100).float()
    ys, xs = torch.arange(f.shape[1]).float()[:, None], torch.arange(f.shape[2]).float()[None, :]
    mass = blue.sum((1, 2)).clamp(min=1)
    return torch.stack([(blue * xs).sum((1, 2)) / mass, (blue * ys).sum((1, 2)) / mass], -1)[:, None, :]


PUSHT_SWEEP = dict(render_size=64, n_goals=2, span=48.0, step=24.0, angle_steps=12, pose_span=40.0, pose_step=40.0, pose_angles=5)


def test_pusht_landscape_sweeps_the_block_angle_as_well_as_its_position():
    from wmquant.diagnose.landscape import pusht_landscape

    seeing = pusht_landscape(pixel_encoder, **PUSHT_SWEEP)
    assert seeing.spearman_euclidean > 0.5 and seeing.spearman_angle > 0.5
    assert "block angle: Spearman" in seeing.summary() and len(seeing.per_goal) == 2
    # blind to the block: only edge pixels shared with it move the agent's centroid
    blind = pusht_landscape(agent_only_encoder, **PUSHT_SWEEP)
    assert max(abs(blind.spearman_angle), abs(blind.spearman_pose), abs(blind.spearman_euclidean)) < 0.25
    # raw pixels saturate once the block no longer overlaps itself, so the joint sweep ranks less well
    assert seeing.spearman_pose > blind.spearman_pose + 0.15
