"""wmquant.io: every file and directory appears under its final name complete or not at all, with
the permissions a plain open() or mkdir() would give it."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from wmquant import io
from wmquant.errors import ConfigError, WmquantError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_path_renames_onto_the_final_name_with_plain_permissions(tmp_path):
    final = tmp_path / "new" / "deeper" / "result.json"  # parents are made
    with io.atomic_path(final) as tmp:
        assert tmp.parent == final.parent and tmp.name.startswith(".tmp-result.json.") and not final.exists()
        tmp.write_text("done")
    assert final.read_text() == "done" and os.listdir(final.parent) == ["result.json"]
    assert mode(final) == 0o666 & ~io._UMASK  # not mkstemp's 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    final = tmp_path / "result.json"
    final.write_text("old")
    with pytest.raises(RuntimeError, match="killed"):
        with io.atomic_path(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert final.read_text() == "old" and os.listdir(tmp_path) == ["result.json"]
    with pytest.raises(KeyboardInterrupt):  # not only Exceptions
        with io.atomic_path(tmp_path / "other.bin") as tmp:
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == ["result.json"]


def test_write_json_turns_arrays_scalars_tensors_and_paths_into_json(tmp_path):
    target = tmp_path / "r.json"
    io.write_json(target, {"array": np.arange(3), "scalar": np.float32(0.5), "tensor": torch.tensor([1.5, 2.0]),
                           "int": torch.tensor(7), "path": Path("a/b")})
    text = target.read_text()
    assert text.endswith("}\n") and text.startswith('{\n  "array"')  # indented by 2, one trailing newline
    assert json.loads(text) == {"array": [0, 1, 2], "scalar": 0.5, "tensor": [1.5, 2.0], "int": 7, "path": "a/b"}
    io.write_json(target, [1], indent=None)
    assert target.read_text() == "[1]\n"


def test_write_json_of_an_unknown_type_raises_and_writes_nothing(tmp_path):
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        io.write_json(tmp_path / "r.json", {"x": object()})
    assert os.listdir(tmp_path) == []


def test_item_without_tolist_is_used():
    class Scalar:
        def item(self):
            return 3

    assert json.loads(json.dumps({"v": Scalar()}, default=io._json_default)) == {"v": 3}


def test_write_bytes_and_text(tmp_path):
    io.write_bytes(tmp_path / "b.bin", b"\x00\xff")
    io.write_text(tmp_path / "t.txt", "\u0394 vs FP")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    assert (tmp_path / "t.txt").read_bytes() == "\u0394 vs FP".encode("utf-8")


def test_make_output_dir(tmp_path):
    made = io.make_output_dir(str(tmp_path / "a" / "b"))
    assert made == tmp_path / "a" / "b" and made.is_dir()
    assert io.make_output_dir(made) == made  # an existing one is fine
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"^report_dir=.*file/sub cannot be created \(.*\); choose a writable directory$"):
        io.make_output_dir(tmp_path / "file" / "sub", key="report_dir")


def test_atomic_directory_appears_whole(tmp_path):
    final = tmp_path / "parent" / "deeper" / "dataset"
    with io.atomic_directory(final) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not final.exists() and tmp.name.startswith(".tmp-dataset.")
    assert (final / "a.txt").read_text() == "1" and os.listdir(final.parent) == ["dataset"]
    assert mode(final) == 0o777 & ~io._UMASK  # not mkdtemp's 0o700


def test_atomic_directory_refuses_an_existing_one_unless_told_to_replace_it(tmp_path):
    final = tmp_path / "dataset"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(WmquantError, match=r"output directory .*dataset already exists"):
        with io.atomic_directory(final):
            pass
    assert os.listdir(final) == ["old.txt"] and os.listdir(tmp_path) == ["dataset"]
    # a replacement that fails leaves the old one whole
    with pytest.raises(RuntimeError):
        with io.atomic_directory(final, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("disk full")
    assert os.listdir(final) == ["old.txt"] and os.listdir(tmp_path) == ["dataset"]
    with io.atomic_directory(final, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
        assert os.listdir(final) == ["old.txt"]  # replaced only once complete
    assert os.listdir(final) == ["new.txt"] and os.listdir(tmp_path) == ["dataset"]  # no backup left


def test_syncing_a_directory_that_cannot_be_opened_is_skipped(tmp_path):
    io._fsync_dir(tmp_path / "missing")  # nothing to sync, no error
    io._fsync_dir(tmp_path)


def _record_fsyncs(monkeypatch, watched: Path) -> list[tuple[str, bool]]:
    """Each fsync as (what it synced, whether `watched` existed by then)."""
    calls = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        calls.append((kind, watched.exists()))
        return real_fsync(fd)

    monkeypatch.setattr(io.os, "fsync", recording_fsync)
    return calls


def test_the_file_is_synced_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    final = tmp_path / "r.json"
    calls = _record_fsyncs(monkeypatch, final)
    io.write_text(final, "x")
    assert calls == [("file", False), ("dir", True)]
    calls = _record_fsyncs(monkeypatch, tmp_path / "d")
    with io.atomic_directory(tmp_path / "d"):
        pass
    assert calls == [("dir", True)]  # the parent, once the directory is in place


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open descriptors through /proc")
def test_no_file_descriptor_is_left_open(tmp_path):
    before = len(os.listdir("/proc/self/fd"))
    for index in range(20):
        io.write_text(tmp_path / f"{index}.txt", "x")
        io._fsync_dir(tmp_path)
    assert len(os.listdir("/proc/self/fd")) == before


def test_the_callers_error_survives_a_temporary_already_gone(tmp_path):
    with pytest.raises(RuntimeError, match="the caller's"):
        with io.atomic_path(tmp_path / "r.json") as tmp:
            tmp.unlink()
            raise RuntimeError("the caller's")
    with pytest.raises(RuntimeError, match="the caller's"):
        with io.atomic_directory(tmp_path / "d") as tmp:
            tmp.rmdir()
            raise RuntimeError("the caller's")
    assert os.listdir(tmp_path) == []


def test_a_backup_that_cannot_be_removed_does_not_fail_a_finished_replacement(tmp_path, monkeypatch):
    final = tmp_path / "dataset"
    final.mkdir()
    real_rmtree = io.shutil.rmtree

    def stubborn_rmtree(path, ignore_errors=False):
        if Path(path).name.startswith(".old-"):
            if not ignore_errors:
                raise PermissionError(f"cannot remove {path}")
            return None
        return real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(io.shutil, "rmtree", stubborn_rmtree)
    with io.atomic_directory(final, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert os.listdir(final) == ["new.txt"]
