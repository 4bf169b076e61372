"""Environments: `make(name)` gives one gymnasium Env with DINO-WM's planning API; `make_batch(name, n)`
gives n of them behind one vectorised object (numpy for Wall, a process pool for PushT)."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import ConfigError

# name -> (module, single-env class, batched-env class). Imported lazily so that `wmquant --help`
# does not pay for pymunk/pygame.
_REGISTRY: dict[str, tuple[str, str, str]] = {
    "wall": ("wmquant.envs.wall", "WallEnv", "WallBatchEnv"),
    "pusht": ("wmquant.envs.pusht", "PushTEnv", "PushTBatchEnv"),
}

ENV_NAMES = tuple(_REGISTRY)


def _lookup(name: str, which: int) -> Any:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown env {name!r}; valid envs: {', '.join(ENV_NAMES)}")
    module = importlib.import_module(_REGISTRY[name][0])
    return getattr(module, _REGISTRY[name][which])


def make(name: str, **kwargs: Any):
    """One environment, e.g. `make("wall")` or `make("pusht", render_size=96)`."""
    return _lookup(name, 1)(**kwargs)


def make_batch(name: str, num_envs: int, **kwargs: Any):
    """`num_envs` environments stepped together (see `wmquant.envs.batch.BatchEnv`)."""
    if int(num_envs) <= 0:
        raise ConfigError(f"num_envs must be a positive integer, got {num_envs!r}")
    return _lookup(name, 2)(num_envs=int(num_envs), **kwargs)


def env_function(name: str, function: str):
    """An optional function of an env's module, or None if the env has none. Used for what only some
    envs can say about their episodes: `needs_push(init_states, goal_states)` (which goals need the
    block moved) and `failure_breakdown(init_states, goal_states, final_states)` (PushT)."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown env {name!r}; valid envs: {', '.join(ENV_NAMES)}")
    return getattr(importlib.import_module(_REGISTRY[name][0]), function, None)
