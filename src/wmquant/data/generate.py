"""`wmquant data`: generate a trajectory dataset in DINO-WM's on-disk layout.

The dataset is written into a temporary directory next to `out_dir` and renamed onto it only when
complete, so an interrupted or failed run leaves no partial dataset. The env-specific generators
share one signature: `(out_dir, episodes, seed, steps, workers, progress, **env_kwargs) -> stats`.
"""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..envs import ENV_NAMES
from ..errors import ConfigError
from ..io import atomic_directory, write_json

MANIFEST_FILE = "wmquant_dataset.json"

# env name -> (module, generator function); each module defines GENERATOR_VERSION, recorded in the manifest
_GENERATORS: dict[str, tuple[str, str]] = {
    "wall": ("wmquant.data.wall", "generate_wall_dataset"),
    "pusht": ("wmquant.data.pusht", "generate_pusht_dataset"),
}


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def generate_dataset(
    env_name: str,
    out_dir: str | os.PathLike,
    episodes: int,
    seed: int,
    steps: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    **env_kwargs: Any,
) -> dict[str, Any]:
    """Generate `episodes` episodes of `env_name` with `seed` into the new directory `out_dir`.

    steps: actions per episode (None: the env's default). workers: processes (None: all cores).
    Writes the env's layout plus `wmquant_dataset.json` (env, episodes, seed, steps, generator
    version, env_kwargs, stats). Returns the generator's statistics plus `wall_seconds`.
    """
    if env_name not in _GENERATORS:
        raise ConfigError(f"unknown env {env_name!r}; valid envs: {', '.join(ENV_NAMES)}")
    episodes = _check_int(episodes, "--episodes", 1)
    seed = _check_int(seed, "--seed", 0)
    if seed >= 2**32:
        raise ConfigError(f"--seed must be below 2**32, got {seed}")
    if steps is not None:
        steps = _check_int(steps, "--steps", 1)
    workers = _available_cores() if workers is None else _check_int(workers, "workers", 1)
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ConfigError(f"output directory {out_dir} already exists; choose another --out or remove it")

    module_name, function_name = _GENERATORS[env_name]
    module = importlib.import_module(module_name)
    generator = getattr(module, function_name)
    started = time.perf_counter()
    with atomic_directory(out_dir) as tmp_dir:
        stats = generator(tmp_dir, episodes, seed, steps, workers, progress, **env_kwargs)
        manifest = {
            "env": env_name,
            "episodes": episodes,
            "seed": seed,
            "steps": steps,
            "generator": f"{module_name}.{function_name}",
            "generator_version": module.GENERATOR_VERSION,
            "wmquant_version": __version__,
            "env_kwargs": env_kwargs,
            "stats": stats,
        }
        write_json(tmp_dir / MANIFEST_FILE, manifest)
    return {**stats, "wall_seconds": time.perf_counter() - started}
