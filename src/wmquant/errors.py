"""User-facing failures.

Every failure a user can cause (a bad flag, a missing file, a corrupt tensor) raises a subclass of
`WmquantError` as early as possible, with the offending value and what would be valid. The CLI turns
it into one line on stderr and exit code 2. Anything else is a bug and keeps its traceback.
"""


class WmquantError(Exception):
    """A failure caused by the user's input; the CLI prints it as one line and exits with 2."""

    exit_code = 2

    def one_line(self) -> str:
        return " ".join(str(self).split())


class ConfigError(WmquantError):
    """An unknown key, value out of range, or an inconsistent combination of settings."""


class DatasetError(WmquantError):
    """A dataset directory that is missing, unreadable or inconsistent."""


class CheckpointError(WmquantError):
    """A checkpoint that is missing, truncated, unsafe or does not match its config."""


class QuantizationError(WmquantError):
    """A quantization recipe that cannot be applied as asked."""


class StudyError(WmquantError):
    """A study spec, sweep directory or result store that cannot be used."""
