"""`wmquant train --config-name train_wall.yaml dataset_path=DATA output_dir=RUN [key=value ...]`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ..configs import compose_config, env_from_overrides
from ..training.run import run_training


def train_command(config_name: str | None, overrides: Sequence[str]) -> int:
    if config_name is None:
        config_name = f"train_{env_from_overrides(overrides)}"
    cfg = compose_config(config_name, overrides)
    summary = run_training(cfg)
    print(json.dumps(summary, indent=2))
    print(f"model: {Path(str(cfg.output_dir)) / 'model'}")
    return 0
