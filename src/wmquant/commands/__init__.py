"""The `wmquant` command's subcommands, apart from the library packages they drive.

Each module here parses a command's arguments, calls the library, and prints for a person; no
library module imports from here (tests/test_layering.py checks it).
"""

from __future__ import annotations

import argparse

from ..errors import ConfigError


def flag_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser whose usage errors exit with 2 and one line, like every other failure."""

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # noqa: D102
            raise ConfigError(f"{message} (see `{self.prog} --help`)")

    return _Parser(prog=prog, description=description)
