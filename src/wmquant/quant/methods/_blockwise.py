"""Helpers shared by the block-wise methods (AWQ, OmniQuant, GPTQ): which Linears of a block are
targets, running a block over recorded inputs, and capturing what its sub-modules receive.

Block-wise methods assume what every wmquant ViT does: `{part}.blocks` run in sequence, each
block's output is the next block's input, and every block gets the same extra arguments (the
predictor's frame-causal mask).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..api import Target, active_targets
from ..recorders import BlockCall
from ..config import QuantConfig


def _targets_by_block(model: nn.Module, qconfig: QuantConfig, part: str, taps: bool) -> dict[int, dict[str, Target]]:
    prefix = f"{part}.blocks."
    found: dict[int, dict[str, Target]] = {}
    for target in active_targets(model, qconfig):
        wanted = target.is_tap if taps else (not target.is_tap and isinstance(target.module, nn.Linear))
        if not wanted or not target.name.startswith(prefix):
            continue
        index, _, inner = target.name[len(prefix):].partition(".")
        found.setdefault(int(index), {})[inner] = target
    return found


def block_targets(model: nn.Module, qconfig: QuantConfig, part: str) -> dict[int, dict[str, Target]]:
    """{block index: {name inside the block (e.g. "attn.qkv"): Target}} for active Linear targets."""
    return _targets_by_block(model, qconfig, part, taps=False)


def block_tap_targets(model: nn.Module, qconfig: QuantConfig, part: str) -> dict[int, dict[str, Target]]:
    """{block index: {tap inside the block (e.g. "attn.q_tap"): Target}} for the attention-matmul
    inputs that are quantized."""
    return _targets_by_block(model, qconfig, part, taps=True)


def model_device(module: nn.Module) -> torch.device:
    for param in module.parameters():
        return param.device
    return torch.device("cpu")


def split_calls(calls: list[BlockCall], batch_size: int) -> list[BlockCall]:
    """The same sequences, in batches of at most `batch_size`."""
    out = []
    for call in calls:
        for start in range(0, call.num_sequences, batch_size):
            out.append(call.with_x(call.x[start:start + batch_size]))
    return out


@torch.no_grad()
def run_block(block: nn.Module, calls: list[BlockCall]) -> list[BlockCall]:
    """Block outputs, as the inputs of the next block (same extra arguments)."""
    return [call.with_x(block(call.x, *call.args, **call.kwargs)) for call in calls]


@dataclass
class Captured:
    """Per recorded call: the positional args, kwargs and output of one sub-module."""

    args: list[tuple] = field(default_factory=list)
    kwargs: list[dict] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)

    def inputs(self) -> list[torch.Tensor]:
        return [a[0] for a in self.args]

    def rows(self) -> torch.Tensor:
        """All first-argument rows concatenated: (total tokens, features)."""
        return torch.cat([x.reshape(-1, x.shape[-1]) for x in self.inputs()])


@torch.no_grad()
def run_and_capture(block: nn.Module, calls: list[BlockCall], names: list[str]) -> tuple[list[BlockCall], dict[str, Captured]]:
    """Run `block` over `calls`, recording the inputs and outputs of the named sub-modules."""
    captured = {name: Captured() for name in names}
    handles = []

    def hook_for(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            captured[name].args.append(args)
            captured[name].kwargs.append(kwargs)
            captured[name].outputs.append(output)
        return hook

    for name in names:
        handles.append(block.get_submodule(name).register_forward_hook(hook_for(name), with_kwargs=True))
    try:
        outputs = run_block(block, calls)
    finally:
        for handle in handles:
            handle.remove()
    return outputs, captured


class SquaredError:
    """Running sum of squared differences; `mean` over every element seen."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    def add(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        self.total += float((prediction - target).double().pow(2).sum())
        self.count += target.numel()

    @property
    def mean(self) -> float:
        return self.total / max(self.count, 1)
