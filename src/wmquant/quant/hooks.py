"""The base of everything in calibration that works through forward hooks on a model."""

from __future__ import annotations

from typing import TypeVar

from torch.utils.hooks import RemovableHandle

_Hooks = TypeVar("_Hooks", bound="ForwardHooks")


class ForwardHooks:
    """Owns the handles of the hooks a subclass registers (into `self._handles`) and removes them
    on `remove()` or when its `with` block ends, so that no hook outlives its use and goes on
    recording from, or rounding in, a model that is later quantized or evaluated."""

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self: _Hooks) -> _Hooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
