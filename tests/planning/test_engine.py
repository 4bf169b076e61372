"""The engine's speed features change nothing they should not: sample expansion, batch sizing,
and the compiled predictor step (when it applies, when it does not, and its fallback)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from wmquant.errors import ConfigError
from wmquant.planning import engine as engine_module
from wmquant.planning.engine import CPU_SEQUENCES_PER_CALL, Engine, per_sample, rollout_bytes_per_sequence
from wmquant.planning.objective import Objective

from toy_model import wall_normalization


def _tiny_model(num_hist: int = 1):
    from wmquant.models.checkpoint import build_world_model

    torch.manual_seed(0)
    return build_world_model({
        "img_size": 32, "num_hist": num_hist, "frameskip": 5, "proprio_dim": 2, "action_dim": 2,
        "encoder": {"backend": "vit", "patch_size": 8, "dim": 32, "depth": 1, "heads": 2, "out_dim": 16},
        "predictor": {"depth": 2, "heads": 2, "dim_head": 16, "mlp_dim": 64, "dropout": 0.0},
        "decoder": None,
    }).eval()


def _inputs(episodes=3, samples=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z0 = {"visual": torch.randn(episodes, 1, 16, 16, generator=gen), "proprio": torch.randn(episodes, 1, 10, generator=gen)}
    goal = {"visual": torch.randn(episodes, 1, 16, 16, generator=gen), "proprio": torch.randn(episodes, 1, 10, generator=gen)}
    return z0, goal, torch.randn(episodes, samples, 5, 10, generator=gen)


def _engine(model, **kwargs):
    return Engine(model, wall_normalization(), img_size=32, objective=Objective(), **kwargs)


def test_per_sample_repeats_rows_and_is_a_view_for_one_episode():
    x = torch.randn(3, 1, 4, 5)
    assert torch.equal(per_sample(x, 7), x.repeat_interleave(7, dim=0))
    one = per_sample(x[:1], 7)
    assert one.data_ptr() == x.data_ptr() and one.stride(0) == 0


def test_rollout_bytes_per_sequence_counts_the_largest_window():
    # 16 patches; width 36 = 16 + 10 + 10; 2 heads x 16; MLP 64; fp32.
    per_token = 3 * 36 + 8 * 32 + 2 * 64
    frames = 3 * 6 * 16 * 36
    assert rollout_bytes_per_sequence(_tiny_model(1), horizon=5) == 4 * (16 * per_token + frames)
    assert rollout_bytes_per_sequence(_tiny_model(3), horizon=5) == 4 * (48 * per_token + frames)
    assert rollout_bytes_per_sequence(nn.Linear(2, 2), horizon=5) is None


def test_episodes_per_call_on_the_cpu():
    engine = _engine(_tiny_model())
    assert engine.episodes_per_call(500, 300) == CPU_SEQUENCES_PER_CALL // 300
    assert engine.episodes_per_call(2, 300) == 2
    assert engine.episodes_per_call(5, 5000) == 1
    assert _engine(_tiny_model(), chunk_episodes=3).episodes_per_call(500, 300) == 3


def test_bad_compile_setting_is_a_config_error():
    with pytest.raises(ConfigError, match="engine.compile"):
        _engine(_tiny_model(), compile="fastest")


class _CountingCompile:
    """Stands in for torch.compile: counts compilations and calls, can be told to fail."""

    def __init__(self, fail: bool = False) -> None:
        self.compiled = 0
        self.calls = 0
        self.fail = fail

    def __call__(self, fn, mode=None):
        self.compiled += 1

        def compiled(*args, **kwargs):
            self.calls += 1
            if self.fail:
                raise RuntimeError("inductor exploded")
            return fn(*args, **kwargs)

        return compiled


def test_compiled_step_is_used_only_where_it_is_safe(monkeypatch):
    fake = _CountingCompile()
    monkeypatch.setattr(engine_module.torch, "compile", fake)
    model = _tiny_model()
    engine = _engine(model, compile=True)
    z0, goal, actions = _inputs()
    eager = _engine(model).sample_costs(z0, goal, actions)
    assert torch.equal(engine.sample_costs(z0, goal, actions), eager)
    assert fake.compiled == 1 and fake.calls == 5 and engine.compile_status == "on"  # 5 predictor calls per rollout
    assert "predict" not in vars(model)  # the instance override is removed after the rollout

    hook = model.predictor.blocks[0].mlp.fc1.register_forward_hook(lambda *args: None)
    engine.sample_costs(z0, goal, actions)
    assert fake.calls == 5  # a hook (a calibration recorder) must see the eager model
    hook.remove()
    engine.rollout({k: v[:, 0:1] for k, v in z0.items()}, actions[:, 0].requires_grad_(True), grad=True)
    assert fake.calls == 5  # gradient planners run eagerly

    model.predictor.blocks[0].mlp.fc1 = nn.Linear(36, 64)  # a swapped layer (quantization) -> recompile
    engine.sample_costs(z0, goal, actions)
    assert fake.compiled == 2


def test_a_failing_compiler_falls_back_to_eager(monkeypatch):
    monkeypatch.setattr(engine_module.torch, "compile", _CountingCompile(fail=True))
    model = _tiny_model()
    engine = _engine(model, compile=True)
    z0, goal, actions = _inputs()
    with pytest.warns(UserWarning, match="inductor exploded"):
        costs = engine.sample_costs(z0, goal, actions)
    assert engine.compile_status.startswith("failed") and "predict" not in vars(model)
    assert torch.equal(costs, _engine(model).sample_costs(z0, goal, actions))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine.sample_costs(z0, goal, actions)  # no retry, no new warning


@pytest.mark.slow
def test_torch_compile_matches_eager_to_float32_rounding():
    """The real compiler (about 30 s on 2 CPU cores)."""
    model = _tiny_model(3)
    z0, goal, actions = _inputs()
    compiled = _engine(model, compile=True)
    costs = compiled.sample_costs(z0, goal, actions)
    assert compiled.compile_status == "on"
    eager = _engine(model).sample_costs(z0, goal, actions)
    assert torch.allclose(costs, eager, rtol=1e-5, atol=1e-6)
