"""Resumable training state without pickles.

Optimizer and scheduler states, step counters and RNG states are split into tensors and a JSON
skeleton that says where each tensor goes and holds the plain values (the step, for one). Both go
into one safetensors file, the skeleton as its metadata, replaced atomically: a run killed while
checkpointing resumes from the previous checkpoint whole. (Until 2026-12-07 the skeleton was a
separate `trainer_state.json`, written after the tensors, so a kill between the two writes paired
new weights with the old step; such older checkpoints still load.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

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


STATE_FILE = "trainer_state.safetensors"
SKELETON_KEY = "wmquant.training_state"
LEGACY_SKELETON_FILE = "trainer_state.json"


def has_state(directory: Path) -> bool:
    """Whether `directory` holds a training state to resume from."""
    return (directory / STATE_FILE).is_file()


def save_state(directory: Path, state: dict[str, Any]) -> None:
    """Write `state` (nested dicts/lists of tensors and plain values) as one file in `directory`."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.dumps(_flatten(state, "s", tensors))
    with wio.atomic_path(directory / STATE_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={SKELETON_KEY: skeleton})


def load_state(directory: Path) -> dict[str, Any]:
    tensor_file = directory / STATE_FILE
    if not tensor_file.exists():
        raise CheckpointError(f"{directory}: no {STATE_FILE} to resume from")
    legacy = directory / LEGACY_SKELETON_FILE  # where the skeleton was before it moved into the file
    try:
        with safe_open(str(tensor_file), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
            skeleton_text = (handle.metadata() or {}).get(SKELETON_KEY)
        if skeleton_text is None and legacy.exists():
            skeleton_text = legacy.read_text()
        skeleton = None if skeleton_text is None else json.loads(skeleton_text)
    except Exception as err:  # safetensors raises several types for truncated files
        raise CheckpointError(f"{tensor_file}: unreadable training state ({err})") from err
    if skeleton is None:
        raise CheckpointError(f"{tensor_file}: no skeleton in the file and no {LEGACY_SKELETON_FILE} beside it")
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
