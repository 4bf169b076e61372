"""The training tests' dataset: a tiny Wall set, generated once for the session."""

from __future__ import annotations

import pytest

from wmquant.cli import main


@pytest.fixture(scope="session")
def wall_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "wall"
    assert main(["data", "--env", "wall", "--out", str(out), "--episodes", "10", "--steps", "25", "--seed", "3",
                 "--workers", "1", "--quiet"]) == 0
    return out
