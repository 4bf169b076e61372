"""Atomic file output: nothing half-written is ever visible under its final name.

Every writer goes through a temporary name in the same directory and `os.replace`, which is atomic
on POSIX. A process killed mid-write (even with SIGKILL) leaves at most a `.tmp-*` file behind,
never a truncated result.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

# mkstemp creates files readable by the owner only; results are shared (clusters, CI artifacts), so
# finished files get the permissions a plain open() would have given them.
_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path`.

    The caller writes the file (with any library) to the yielded path. On an exception the
    temporary file is removed and `path` is left untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{final.name}.", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def make_output_dir(path: str | os.PathLike, key: str = "output_dir") -> Path:
    """Create a run's output directory; one that cannot be created is a ConfigError naming `key`."""
    from .errors import ConfigError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{key}={path} cannot be created ({err.strerror or type(err).__name__}); choose a writable directory") from None
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    """Make numpy and torch scalars/arrays JSON-serialisable."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that is renamed onto `path` when the block succeeds.

    Used for outputs made of many files (a dataset, an exported checkpoint): a reader either sees
    the complete directory or none. With `overwrite`, an existing directory is replaced only after
    the new one is complete.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not overwrite:
        from .errors import WmquantError

        raise WmquantError(f"output directory {final} already exists; choose another --out or remove it")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}.", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        if final.exists():
            backup = final.with_name(f".old-{final.name}.{os.getpid()}")
            os.replace(final, backup)
            os.replace(tmp, final)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
