"""Frames -> model input: layout rule, value mapping, resizing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wmquant.data.transforms import frames_are_channels_last, to_model_input
from wmquant.errors import ConfigError


def test_value_mapping_at_native_size_is_exact():
    frames = torch.tensor([0, 51, 255], dtype=torch.uint8).repeat(4, 4, 3, 1).permute(3, 2, 0, 1)  # (3, 3, 4, 4)
    out = to_model_input(frames, 4, channels_last=False)
    assert out.shape == (3, 3, 4, 4) and out.dtype == torch.float32
    np.testing.assert_allclose(out[:, 0, 0, 0].numpy(), [-1.0, 51 / 255 * 2 - 1, 1.0], atol=1e-6)


def test_channels_last_and_first_and_numpy_agree():
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (2, 5, 65, 65, 3), dtype=np.uint8)  # (b, t, H, W, 3) as planners hold it
    chw = torch.from_numpy(hwc).permute(0, 1, 4, 2, 3)
    a = to_model_input(hwc, 32)
    b = to_model_input(chw, 32)
    c = to_model_input(chw.float(), 32)  # float frames in [0, 255]
    assert a.shape == (2, 5, 3, 32, 32)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    assert a.min() >= -1 and a.max() <= 1


def test_resize_is_bilinear_with_antialias():
    rng = np.random.default_rng(1)
    frames = torch.from_numpy(rng.integers(0, 256, (4, 3, 65, 65), dtype=np.uint8))
    expected = F.interpolate(frames.float(), size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(to_model_input(frames, 28), expected / 127.5 - 1, atol=1e-5, rtol=0)
    aliased = F.interpolate(frames.float(), size=(28, 28), mode="bilinear", align_corners=False) / 127.5 - 1
    assert (to_model_input(frames, 28) - aliased).abs().max() > 0.05  # downsampling really is antialiased


def test_constant_image_stays_constant_when_resized():
    frames = torch.full((1, 3, 65, 65), 102, dtype=torch.uint8)
    out = to_model_input(frames, 224)
    torch.testing.assert_close(out, torch.full_like(out, 102 / 255 * 2 - 1), atol=1e-6, rtol=0)


def test_input_is_not_modified():
    frames = torch.rand(2, 3, 16, 16) * 255
    before = frames.clone()
    to_model_input(frames, 16)
    assert torch.equal(frames, before)


def test_layout_rule():
    assert frames_are_channels_last((10, 65, 65, 3))
    assert not frames_are_channels_last((10, 3, 65, 65))
    with pytest.raises(ConfigError, match="channels_last"):
        frames_are_channels_last((3, 3, 3))
    out = to_model_input(torch.zeros(3, 3, 3, dtype=torch.uint8), 3, channels_last=True)
    assert out.shape == (3, 3, 3)


@pytest.mark.parametrize(
    "frames, size",
    [
        (torch.zeros(4, 4, dtype=torch.uint8), 4),  # no channel axis
        (torch.zeros(2, 4, 4, 4, dtype=torch.uint8), 4),  # 4 channels
        (torch.zeros(2, 3, 4, 4, dtype=torch.int32), 4),  # neither uint8 nor float
        (torch.zeros(2, 3, 4, 4, dtype=torch.uint8), 0),
        ([[1, 2, 3]], 4),
    ],
)
def test_bad_frames_raise_config_error(frames, size):
    with pytest.raises(ConfigError):
        to_model_input(frames, size)


@pytest.mark.parametrize(
    "shape, channels_last, layout",
    [
        ((2, 3, 5, 5), True, r"\(\.\.\., H, W, 3\)"),  # channels-first frames declared channels-last
        ((2, 5, 5, 3), False, r"\(\.\.\., 3, H, W\)"),  # and the other way round
        ((2, 5, 3, 5), True, r"\(\.\.\., H, W, 3\)"),  # a 3 elsewhere is not the channel axis
        ((3, 5, 5, 5), False, r"\(\.\.\., 3, H, W\)"),
        ((5, 3), True, r"\(\.\.\., H, W, 3\)"),  # too few dims for any layout
    ],
)
def test_a_declared_layout_the_frames_do_not_have_is_refused(shape, channels_last, layout):
    with pytest.raises(ConfigError, match=rf"frames with shape \({', '.join(map(str, shape))},?\) are not {layout}"):
        to_model_input(torch.zeros(shape, dtype=torch.uint8), 5, channels_last=channels_last)


def test_one_frame_and_an_empty_batch_are_resized():
    one = torch.full((3, 65, 65), 51, dtype=torch.uint8)  # a single (3, H, W) frame, no batch axis
    out = to_model_input(one, 8)
    torch.testing.assert_close(out, torch.full((3, 8, 8), 51 / 255 * 2 - 1), atol=1e-6, rtol=0)
    assert to_model_input(torch.zeros(0, 4, 65, 65, 3, dtype=torch.uint8), 8).shape == (0, 4, 3, 8, 8)
    assert to_model_input(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8), 1).tolist() == [[[[1.0]]] * 3]


def test_output_dtype_and_precision():
    rng = np.random.default_rng(2)
    frames = torch.from_numpy(rng.integers(0, 256, (2, 3, 33, 33), dtype=np.uint8))
    reference = F.interpolate(frames.double(), size=(10, 10), mode="bilinear", align_corners=False, antialias=True)
    reference = reference * (2.0 / 255.0) - 1.0
    wide = to_model_input(frames, 10, dtype=torch.float64)
    assert wide.dtype == torch.float64
    assert (wide - reference).abs().max() < 1e-12  # resized in float64, not through float32
    # bfloat16 output is resized in float32 (CPU antialias has no bfloat16 kernel), then cast
    narrow = to_model_input(frames, 10, dtype=torch.bfloat16)
    assert narrow.dtype == torch.bfloat16
    torch.testing.assert_close(narrow, reference.to(torch.bfloat16), atol=0.01, rtol=0)


def test_frames_are_processed_on_the_requested_device():
    frames = torch.zeros(2, 65, 65, 3, dtype=torch.uint8)
    out = to_model_input(frames, 8, device="meta")  # shapes and devices without data
    assert out.device.type == "meta" and out.shape == (2, 3, 8, 8)
    assert to_model_input(frames, 8).device.type == "cpu"
