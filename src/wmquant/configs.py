"""The Hydra configs of wmquant (`wmquant/conf`), composed as the original study's scripts did.

Library code (sessions, the study runner, benchmarks) and the command line compose configs through
`compose_config`; a failed composition is a ConfigError with a hint of the closest valid keys.
"""

from __future__ import annotations

from typing import Sequence

from .errors import ConfigError


def compose_config(config_name: str, overrides: Sequence[str]):
    """Compose `wmquant/conf/<config_name>.yaml` with Hydra and the given overrides."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="wmquant.conf", version_base=None):
            return compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        hint = _unknown_key_hint(config_name, first)
        raise ConfigError(f"{first} (config {config_name}.yaml){hint}") from err
    finally:
        GlobalHydra.instance().clear()


def _unknown_key_hint(config_name: str, message: str) -> str:
    """For Hydra's "Could not override 'key'": the closest keys the config has, and the `+key=`
    form that adds a new one."""
    import difflib
    import re

    match = re.match(r"Could not override '([^']+)'", message)
    if not match:
        return ""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="wmquant.conf", version_base=None):
        base = OmegaConf.to_container(compose(config_name=config_name), resolve=False)

    def keys(node, prefix=""):
        for name, value in node.items():
            yield f"{prefix}{name}"
            if isinstance(value, dict):
                yield from keys(value, f"{prefix}{name}.")

    close = difflib.get_close_matches(match.group(1), list(keys(base)), n=3, cutoff=0.6)
    nearest = f"; closest keys: {', '.join(close)}" if close else ""
    return f": no such key{nearest} (`+{match.group(1)}=...` adds a new key)"


def env_from_overrides(overrides: Sequence[str], default: str = "wall") -> str:
    """The env an override list names (`env=...`), to pick plan_<env>.yaml / train_<env>.yaml."""
    from .envs import ENV_NAMES

    env = next((o.split("=", 1)[1] for o in overrides if o.startswith("env=")), default)
    if env not in ENV_NAMES:
        raise ConfigError(f"unknown env {env!r}; valid envs: {', '.join(ENV_NAMES)}")
    return env
