"""Helpers shared by the INT8 and INT4 linears: padding to kernel tile sizes, output dtype, bytes,
and the re-derivation of kernel-ready tensors after moves and loads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def pad_2d(t: torch.Tensor, rows: int, cols: int, value: float | int = 0) -> torch.Tensor:
    """`t` (r, c) zero-padded (or `value`-padded) at the end to (rows, cols); `t` itself if no padding."""
    pad_rows, pad_cols = rows - t.shape[0], cols - t.shape[1]
    if pad_rows == 0 and pad_cols == 0:
        return t
    return F.pad(t, (0, pad_cols, 0, pad_rows), value=value)


def output_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a float Linear would return for `x` here: the autocast dtype inside autocast, else x's."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype if x.is_floating_point() else torch.float32


def tensor_bytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


class DerivedKernelState(nn.Module):
    """A module whose kernel-ready tensors (packed weights, padded scales) are derived from its
    stored state by `prepare()`; they are re-derived after every move/cast and every state-dict
    load, so they always match the stored codes and the device."""

    def prepare(self) -> None:
        raise NotImplementedError

    def reset_derived_buffers(self) -> None:
        self.prepare()

    def _drop_derived(self) -> None:
        """Release derived tensors before a move (default: keep them; prepare() replaces them)."""

    def _apply(self, fn, recurse=True):
        self._drop_derived()
        super()._apply(fn, recurse)
        self.prepare()
        return self

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.prepare()
