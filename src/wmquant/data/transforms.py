"""Frames -> model input, the one image preprocessing step shared by training and planning.

Upstream resizes the frame to 224 (bilinear with antialias), divides by 255 and applies
Normalize(0.5, 0.5). Resizing and the affine map are both linear, so their order does not matter;
here the resize runs on float32 pixels in [0, 255] straight to the model's resolution.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError

CHANNELS = 3


def frames_are_channels_last(shape: tuple[int, ...]) -> bool:
    """The layout rule used when `channels_last` is not given: (..., H, W, 3) is channels-last and
    (..., 3, H, W) channels-first; a shape that fits both (e.g. 3 x 3 x 3) must be stated explicitly."""
    if len(shape) < 3:
        raise ConfigError(f"frames need at least 3 dims (..., H, W, 3) or (..., 3, H, W), got shape {tuple(shape)}")
    last, first = shape[-1] == CHANNELS, shape[-3] == CHANNELS
    if last == first:
        raise ConfigError(
            f"cannot tell the channel axis of frames with shape {tuple(shape)}; pass channels_last=True or False"
        )
    return last


def to_model_input(
    visual: Any,
    img_size: int,
    channels_last: bool | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Frames -> float tensor in [-1, 1] of shape (..., 3, img_size, img_size).

    visual: numpy array or tensor, (..., H, W, 3) or (..., 3, H, W); uint8, or float with values in
        [0, 255] (never [0, 1]). `channels_last=None` infers the layout (`frames_are_channels_last`).
    img_size: output side in pixels; frames already at that size are not resampled.
    device: where to compute; the input moves there while still uint8 (4x less to copy).
    Resizing is bilinear with antialias (torchvision's `Resize` on tensors).
    """
    if isinstance(img_size, bool) or not isinstance(img_size, (int, np.integer)) or img_size <= 0:
        raise ConfigError(f"img_size must be a positive integer, got {img_size!r}")
    frames = torch.from_numpy(np.ascontiguousarray(visual)) if isinstance(visual, np.ndarray) else visual
    if not isinstance(frames, torch.Tensor):
        raise ConfigError(f"frames must be a numpy array or a torch tensor, got {type(visual).__name__}")
    if frames.dtype != torch.uint8 and not frames.is_floating_point():
        raise ConfigError(f"frames must be uint8 or float in [0, 255], got dtype {frames.dtype}")
    if channels_last is None:
        channels_last = frames_are_channels_last(tuple(frames.shape))
    elif len(frames.shape) < 3 or frames.shape[-1 if channels_last else -3] != CHANNELS:
        layout = "(..., H, W, 3)" if channels_last else "(..., 3, H, W)"
        raise ConfigError(f"frames with shape {tuple(frames.shape)} are not {layout}")
    if device is not None:
        frames = frames.to(device)
    if channels_last:
        frames = frames.movedim(-1, -3)
    lead, (height, width) = frames.shape[:-3], frames.shape[-2:]
    flat = frames.reshape(-1, CHANNELS, height, width).to(dtype)
    if (height, width) != (img_size, img_size) and flat.shape[0] > 0:  # an empty batch has nothing to resample
        # antialias needs float32/64 inputs on CPU
        work_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        flat = F.interpolate(
            flat.to(work_dtype), size=(img_size, img_size), mode="bilinear", align_corners=False, antialias=True
        ).to(dtype)
    # x / 255 then Normalize(mean 0.5, std 0.5); out of place, `flat` may be the caller's tensor
    flat = flat * (2.0 / 255.0) - 1.0
    return flat.reshape(*lead, CHANNELS, img_size, img_size)
