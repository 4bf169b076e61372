"""The `wmquant` command.

Planning, statistics, quantization, training and sweeps take Hydra-style arguments exactly as the
original study's scripts did (`--config-name plan_wall.yaml key=value ...`); the configs live in
`wmquant/conf`. Utility commands (data, demo, diagnose, runs, report, bench, export) take flags.

Every failure a user can cause ends as one line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable, Sequence

from .errors import ConfigError, WmquantError

HYDRA_COMMANDS = {
    "plan": ("wmquant.commands.plan", "plan_command", "FP planning (the baseline): `wmquant plan --config-name plan_wall.yaml model_name=wall`"),
    "quant": ("wmquant.commands.plan", "quant_command", "calibrate, quantize and plan: `wmquant quant method=rtn predictor_wbit=8 ...`"),
    "ceiling": ("wmquant.commands.plan", "ceiling_command", "the planning ceiling: MPC-CEM with the true dynamics and a Euclidean state cost"),
    "plan-act": ("wmquant.commands.plan", "plan_act_command", "per-channel activation statistics for SmoothQuant/OmniQuant"),
    "train": ("wmquant.commands.train", "train_command", "train a world model (and its encoder): `wmquant train --config-name train_wall.yaml`"),
    "sweep": ("wmquant.commands.study", "sweep_command", "run a study spec: `wmquant sweep study=table1 model_name=wall`"),
}

FLAG_COMMANDS = {
    "data": ("wmquant.commands.data", "data_main", "generate a dataset in DINO-WM's on-disk layout"),
    "demo": ("wmquant.commands.demo", "demo_main", "the quickstart: FP, W8A8 and W4 planning on the shipped Wall model"),
    "diagnose": ("wmquant.commands.diagnose", "diagnose_main", "diagnostics: `wmquant diagnose landscape --model wall`"),
    "runs": ("wmquant.commands.study", "runs_main", "list and filter runs of a sweep: `wmquant runs list SWEEP_DIR`"),
    "report": ("wmquant.commands.study", "report_main", "tables, figures and an HTML page for a sweep: `wmquant report SWEEP_DIR`"),
    "bench": ("wmquant.commands.bench", "bench_main", "speed and memory benchmarks (`--quick` for a CPU smoke run)"),
    "export": ("wmquant.commands.export", "export_main", "write a real low-bit checkpoint"),
    "models": ("wmquant.commands.models", "models_main", "list the shipped world models"),
}


def _load(module: str, attr: str) -> Callable:
    import importlib

    return getattr(importlib.import_module(module), attr)


def parse_hydra_args(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Split `--config-name NAME` (or `-cn NAME`, `--config-name=NAME`) from the overrides."""
    config_name = None
    overrides: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in ("--config-name", "-cn"):
            config_name = next(it, None)
            if config_name is None:
                raise ConfigError("--config-name needs a value, e.g. --config-name plan_wall.yaml")
        elif arg.startswith("--config-name="):
            config_name = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            raise ConfigError(f"unknown option {arg!r}; give --config-name NAME and key=value overrides")
        else:
            overrides.append(arg)
    if config_name is not None and config_name.endswith(".yaml"):
        config_name = config_name[: -len(".yaml")]
    return config_name, overrides


def _usage() -> str:
    lines = ["usage: wmquant COMMAND [ARGS]", "", "commands:"]
    for name, (_, _, text) in {**HYDRA_COMMANDS, **FLAG_COMMANDS}.items():
        lines.append(f"  {name:<10} {text}")
    lines += ["", "`wmquant COMMAND --help` shows a command's arguments."]
    return "\n".join(lines)


class Terminated(BaseException):
    """SIGTERM (`kill`, `timeout`, a batch scheduler), raised in the main thread so that a command
    unwinds as for Ctrl-C: temporary files are removed, envs closed, a sweep's workers stopped."""


def _raise_terminated(signum, frame):
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        return _main(argv)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"wmquant {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command in HYDRA_COMMANDS:
            module, attr, text = HYDRA_COMMANDS[command]
            if rest and rest[0] in ("-h", "--help"):
                print(f"wmquant {command}: {text}\n\nArguments: [--config-name NAME] key=value ... "
                      f"(keys: see `wmquant/conf/*.yaml`; the original study's keys keep their meaning)")
                return 0
            config_name, overrides = parse_hydra_args(rest)
            return int(_load(module, attr)(config_name, overrides) or 0)
        if command in FLAG_COMMANDS:
            module, attr, _ = FLAG_COMMANDS[command]
            return int(_load(module, attr)(rest) or 0)
        raise ConfigError(f"unknown command {command!r}; valid: {', '.join([*HYDRA_COMMANDS, *FLAG_COMMANDS])}")
    except WmquantError as err:
        print(f"wmquant {command}: error: {err.one_line()}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"\nwmquant {command}: interrupted", file=sys.stderr)  # below a progress bar, not on its line
        return 130
    except Terminated:
        print(f"\nwmquant {command}: terminated", file=sys.stderr)
        return 143
    except BrokenPipeError:  # the reader went away (`wmquant runs list ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    entrypoint()
