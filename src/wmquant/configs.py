"""The Hydra configs of wmquant (`wmquant/conf`), composed as the original study's scripts did.

Library code (sessions, the study runner, benchmarks) and the command line compose configs through
`compose_config`; a failed composition is a ConfigError with a hint of the closest valid keys.
"""

from __future__ import annotations

from typing import Sequence

from .errors import ConfigError


#: DINO-WM's planner config group (its conf/planner/*.yaml, chosen with `planner=NAME`) -> our
#: (planner.name, planner.sub_planner.name). Our planner is one node, so that study specs and the
#: seed README's `planner.max_iter` / `planner.sub_planner.opt_steps` overrides apply whichever
#: planner runs; the group name only picks the two names and leaves every budget key as it is.
PLANNER_GROUPS = {"mpc_cem": ("mpc", "cem"), "mpc_gd": ("mpc", "gd"), "cem": ("cem", "cem"), "gd": ("gd", "gd")}


def expand_planner_group(overrides: Sequence[str]) -> list[str]:
    """`planner=mpc_gd` (DINO-WM's group choice) -> `planner.name=mpc planner.sub_planner.name=gd`;
    every other override is kept as it is."""
    expanded: list[str] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key.lstrip("+~") != "planner":
            expanded.append(item)
            continue
        if value not in PLANNER_GROUPS:
            raise ConfigError(
                f"unknown planner {value!r}; valid: {', '.join(PLANNER_GROUPS)} "
                "(DINO-WM's planner groups), or set planner.name and planner.sub_planner.name"
            )
        outer, sub = PLANNER_GROUPS[value]
        expanded += [f"planner.name={outer}", f"planner.sub_planner.name={sub}"]
    return expanded


def compose_config(config_name: str, overrides: Sequence[str]):
    """Compose `wmquant/conf/<config_name>.yaml` with Hydra and the given overrides."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if config_name.startswith("plan"):
        overrides = expand_planner_group(overrides)
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
