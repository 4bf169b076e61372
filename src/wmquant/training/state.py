"""Resumable training state without pickles.

Optimizer and scheduler states, step counters and RNG states are split into tensors (saved with
safetensors) and a JSON skeleton that says where each tensor goes. Writes are atomic, so a run killed
while checkpointing resumes from the previous checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .. import io as wio
from ..errors import CheckpointError


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = prefix or "root"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_flatten(k, f"{prefix}.k{i}", tensors), _flatten(v, f"{prefix}.{i}", tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        items = [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a training state")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_state(directory: Path, state: dict[str, Any]) -> None:
    """Write `state` (nested dicts/lists of tensors and plain values) as two files in `directory`."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "s", tensors)
    with wio.atomic_path(directory / "trainer_state.safetensors") as tmp:
        save_file(tensors, str(tmp))
    wio.write_text(directory / "trainer_state.json", json.dumps(skeleton))


def load_state(directory: Path) -> dict[str, Any]:
    tensor_file, skeleton_file = directory / "trainer_state.safetensors", directory / "trainer_state.json"
    if not tensor_file.exists() or not skeleton_file.exists():
        raise CheckpointError(f"{directory}: no trainer_state.safetensors/.json to resume from")
    try:
        tensors = load_file(str(tensor_file))
        skeleton = json.loads(skeleton_file.read_text())
    except Exception as err:  # safetensors raises several types for truncated files
        raise CheckpointError(f"{tensor_file}: unreadable training state ({err})") from err
    return _unflatten(skeleton, tensors)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def cosine_lr(step: int, total: int, warmup: int, base: float, final_fraction: float = 0.05) -> float:
    """Linear warm-up, then cosine decay to `final_fraction * base`."""
    import math

    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))
