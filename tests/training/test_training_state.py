"""The resumable training state: one safetensors file with its skeleton as metadata, replaced
atomically, and the older two-file layout still read."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import wmquant.training.state as training_state
from wmquant.errors import CheckpointError
from wmquant.training.state import cosine_lr, has_state, load_state, rng_state, save_state, set_rng_state


def _state(step: int) -> dict:
    generator = torch.Generator().manual_seed(step)
    return {
        "step": step,
        "model": {"w": torch.randn(3, 4, generator=generator), "half": torch.ones(2, dtype=torch.bfloat16) * step},
        "optimizers": [{"state": {0: {"step": torch.tensor(float(step)), "exp_avg": torch.randn(3, generator=generator)}},
                        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95), "params": [0], "amsgrad": False,
                                          "foreach": None}]}],
        "rng": {"torch": torch.get_rng_state()},
        "note": "text",
    }


def _assert_equal(a, b) -> None:
    assert type(a) is type(b), (a, b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _assert_equal(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_equal(x, y)
    else:
        assert a == b


def test_a_state_comes_back_as_it_was_saved_in_one_file(tmp_path):
    state = _state(7)
    assert not has_state(tmp_path)
    save_state(tmp_path, state)
    assert has_state(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trainer_state.safetensors"]
    _assert_equal(load_state(tmp_path), state)  # int keys, tuples, None, booleans and dtypes kept


def test_a_write_that_dies_leaves_the_previous_state_whole(tmp_path, monkeypatch):
    finished = _state(3)
    save_state(tmp_path, finished)

    def dies(tensors, path, metadata=None):
        with open(path, "wb") as handle:
            handle.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(training_state, "save_file", dies)
    with pytest.raises(KeyboardInterrupt):
        save_state(tmp_path, _state(9))
    restored = load_state(tmp_path)
    assert restored["step"] == 3  # the step and the tensors both of the last finished checkpoint
    _assert_equal(restored, finished)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trainer_state.safetensors"]


def test_a_state_of_the_older_two_file_layout_loads(tmp_path):
    tensors = {"s.model.w": torch.arange(6.0).reshape(2, 3)}
    save_file(tensors, str(tmp_path / "trainer_state.safetensors"))
    (tmp_path / "trainer_state.json").write_text(json.dumps({"__dict__": [["step", 4], ["model", {"__dict__": [
        ["w", {"__tensor__": "s.model.w"}]]}]]}))
    restored = load_state(tmp_path)
    assert restored["step"] == 4 and torch.equal(restored["model"]["w"], tensors["s.model.w"])
    (tmp_path / "trainer_state.json").unlink()
    with pytest.raises(CheckpointError, match="no skeleton in the file and no trainer_state.json beside it"):
        load_state(tmp_path)


def test_a_missing_or_broken_state_is_refused_by_name(tmp_path):
    with pytest.raises(CheckpointError, match="no trainer_state.safetensors to resume from"):
        load_state(tmp_path)
    save_state(tmp_path, _state(1))
    path = tmp_path / "trainer_state.safetensors"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="trainer_state.safetensors: unreadable training state"):
        load_state(tmp_path)


def test_an_object_that_is_no_plain_value_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(TypeError, match="cannot store set in a training state"):
        save_state(tmp_path, {"bad": {1, 2}})
    assert not any(tmp_path.iterdir())


def test_the_learning_rate_warms_up_linearly_then_follows_a_cosine_to_its_floor():
    assert [cosine_lr(step, 10, 4, 1.0) for step in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert cosine_lr(4, 10, 4, 1.0) == pytest.approx(1.0)  # the cosine starts at the peak
    assert cosine_lr(7, 10, 4, 2.0) == pytest.approx(2.0 * (0.05 + 0.95 * 0.5))  # half way down
    assert cosine_lr(10, 10, 4, 1.0, final_fraction=0.1) == pytest.approx(0.1)
    assert cosine_lr(25, 10, 4, 1.0, final_fraction=0.1) == pytest.approx(0.1)  # held at the floor after the end
    assert cosine_lr(0, 10, 0, 1.0) == pytest.approx(1.0) and cosine_lr(5, 10, 0, 1.0) == pytest.approx(0.525)
    assert cosine_lr(0, 0, 0, 1.0) == pytest.approx(1.0)  # no steps: no division by zero
    assert cosine_lr(0, 10, 1, 1.0) == pytest.approx(1.0)  # one warm-up step reaches the peak
    assert cosine_lr(5, 5, 4, 1.0) == pytest.approx(0.05)  # one cosine step reaches the floor


def test_the_rng_state_restores_the_same_draws():
    saved = rng_state()
    first = torch.rand(5)
    torch.rand(3)
    set_rng_state(saved)
    assert torch.equal(torch.rand(5), first)
    assert set(saved) == ({"torch", "cuda"} if torch.cuda.is_available() else {"torch"})
