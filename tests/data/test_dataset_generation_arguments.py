"""`generate_dataset` (wmquant.data.generate): the smallest valid arguments, the seed's upper bound,
the default worker count, the manifest, and the time it reports."""

from __future__ import annotations

import json
import time

import pytest

from wmquant.data import generate as generate_module
from wmquant.data import generate_dataset
from wmquant.data import pusht as pusht_data
from wmquant.data import wall as wall_data
from wmquant.errors import ConfigError


def test_the_smallest_dataset_with_default_workers_and_a_str_path(tmp_path):
    out = tmp_path / "tiny"
    before = time.perf_counter()
    stats = generate_dataset("wall", str(out), episodes=1, seed=2**32 - 1, steps=1, progress=False)
    elapsed = time.perf_counter() - before
    assert 0 < stats["wall_seconds"] <= elapsed
    manifest = json.loads((out / generate_module.MANIFEST_FILE).read_text())
    assert manifest["episodes"] == 1 and manifest["seed"] == 2**32 - 1 and manifest["steps"] == 1
    assert manifest["generator"] == "wmquant.data.wall.generate_wall_dataset"
    assert manifest["generator_version"] == wall_data.GENERATOR_VERSION and manifest["env_kwargs"] == {}
    assert manifest["stats"]["episodes"] == 1


def test_seeds_stop_below_2_to_the_32(tmp_path):
    with pytest.raises(ConfigError, match=r"--seed must be below 2\*\*32, got 4294967296"):
        generate_dataset("wall", tmp_path / "w", episodes=1, seed=2**32, steps=1, progress=False)
    assert not (tmp_path / "w").exists()


def test_every_generator_module_declares_its_version():
    for module_name, _ in generate_module._GENERATORS.values():
        assert isinstance(__import__(module_name, fromlist=["x"]).GENERATOR_VERSION, int)
    assert pusht_data.GENERATOR_VERSION >= 1


def test_default_workers_are_the_cores_this_process_may_use(monkeypatch):
    asked = []

    def affinity(pid):
        asked.append(pid)
        return {0, 3, 5}

    monkeypatch.setattr(generate_module.os, "sched_getaffinity", affinity, raising=False)
    assert generate_module._available_cores() == 3 and asked == [0]  # this process, not pid 1
    monkeypatch.delattr(generate_module.os, "sched_getaffinity")  # not on Linux
    monkeypatch.setattr(generate_module.os, "cpu_count", lambda: 6)
    assert generate_module._available_cores() == 6
    monkeypatch.setattr(generate_module.os, "cpu_count", lambda: None)  # unknown: one
    assert generate_module._available_cores() == 1
