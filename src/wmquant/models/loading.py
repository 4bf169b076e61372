"""What every loader in `wmquant.models` shares: exact state-dict assignment, fast construction
of modules that are about to be loaded, YAML reading, and one-line error messages.

A loader maps a file's tensor names onto a module's names, then calls `assign_exact`: every
expected tensor must be present with the module's shape, and nothing else may be in the file.
A partial or mismatched load raises `CheckpointError` naming the file, never a silent
half-initialised model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
import yaml
from torch import nn

from ..errors import CheckpointError, WmquantError

_SHOWN_KEYS = 5
ModuleT = TypeVar("ModuleT", bound=nn.Module)


def summarize_keys(keys: Iterable[str]) -> str:
    """The first few names, sorted, then how many more: '[a, b, c] (+12 more)'."""
    ordered = sorted(keys)
    shown = ", ".join(ordered[:_SHOWN_KEYS])
    rest = len(ordered) - _SHOWN_KEYS
    return f"[{shown}]" + (f" (+{rest} more)" if rest > 0 else "")


def persistent_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's parameters and persistent buffers by state-dict name (tensors, not copies)."""
    return dict(module.state_dict(keep_vars=True))


def assign_exact(
    module: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    source: str,
    what: str,
    skip_prefixes: tuple[str, ...] = (),
) -> None:
    """Copy `tensors` into `module`'s parameters and persistent buffers, in place.

    `source` names the file (for messages) and `what` the model part ("DINOv2 weights",
    "predictor"). Names starting with one of `skip_prefixes` are neither expected nor
    assigned. Raises CheckpointError on missing or unexpected names and on shape mismatches.
    """
    targets = {
        name: tensor
        for name, tensor in persistent_state(module).items()
        if not name.startswith(skip_prefixes)
    }
    missing = targets.keys() - tensors.keys()
    unexpected = tensors.keys() - targets.keys()
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing keys {summarize_keys(missing)}")
        if unexpected:
            problems.append(f"unexpected keys {summarize_keys(unexpected)}")
        raise CheckpointError(f"{source}: {what} do not match the model: " + "; ".join(problems))
    for name, target in targets.items():
        value = tensors[name]
        if tuple(value.shape) != tuple(target.shape):
            raise CheckpointError(
                f"{source}: {what}: tensor {name!r} has shape {tuple(value.shape)} "
                f"but the model expects {tuple(target.shape)}"
            )
    with torch.no_grad():
        for name, target in targets.items():
            target.copy_(tensors[name])


def first_line(exc: BaseException) -> str:
    """`Type: first line of the message`, for wrapping a library error into a one-line message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def build_for_loading(factory: Callable[[], ModuleT], device: str | torch.device = "cpu") -> ModuleT:
    """Build a module whose every persistent tensor is about to be loaded, skipping random init.

    The module is built on the meta device and given uninitialised storage on `device`, which
    saves seconds for a DINOv2 encoder. Non-persistent buffers are derived from the constructor
    arguments; modules that have them recompute them in `reset_derived_buffers()`.
    """
    with torch.device("meta"):
        module = factory()
    module = module.to_empty(device=device)
    for submodule in module.modules():
        derived = sorted(name for name in submodule._non_persistent_buffers_set if getattr(submodule, name, None) is not None)
        if derived:
            reset = getattr(submodule, "reset_derived_buffers", None)
            if reset is None:
                raise TypeError(f"{type(submodule).__name__} has non-persistent buffers {derived} but no reset_derived_buffers()")
            reset()
    return module


def read_yaml_mapping(path: Path, missing_hint: str, error: type[WmquantError] = CheckpointError) -> dict[str, Any]:
    """The mapping stored as YAML in `path`. A missing file raises CheckpointError with
    `missing_hint`; unreadable YAML or a non-mapping raises `error`."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; {missing_hint}")
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise error(f"{path}: not valid YAML ({first_line(exc)})") from exc
    if not isinstance(document, dict):
        raise error(f"{path}: expected a YAML mapping, got {type(document).__name__}")
    return document
