"""The encoder pretraining's auxiliary state readout (`encoder_pretrain.state_readout_weight`): a linear
map from the flattened tokens to the normalised state, each angle as its cosine and sine, trained with
the encoder and dropped after pretraining."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from wmquant.cli import main
from wmquant.errors import ConfigError
from wmquant.training.batches import EpisodeTensors
from wmquant.training.encoder import MetricPretrainConfig, StateReadout, pretrain_metric_encoder, state_features
from wmquant.training.state import load_state, save_state

from test_train import TINY


def test_state_features_keep_the_positions_and_put_each_angle_as_cos_and_sin():
    states = torch.tensor([[1.0, 2.0, 3.0, 4.0, math.pi / 2], [5.0, 6.0, 7.0, 8.0, math.pi]])
    expected = torch.tensor([[1.0, 2.0, 3.0, 4.0, 0.0, 1.0], [5.0, 6.0, 7.0, 8.0, -1.0, 0.0]])
    assert torch.allclose(state_features(states, [4]), expected, atol=1e-6)
    assert torch.allclose(state_features(states, [-1]), expected, atol=1e-6)  # a negative index is the same dim
    assert torch.equal(state_features(states, []), states)


def test_state_features_of_an_angle_before_other_dims_and_of_a_batch_of_sequences():
    states = torch.tensor([[0.0, 7.0, 8.0], [math.pi / 2, 9.0, 10.0]])
    expected = torch.tensor([[7.0, 8.0, 1.0, 0.0], [9.0, 10.0, 0.0, 1.0]])
    assert torch.allclose(state_features(states, [0]), expected, atol=1e-6)
    sequences = torch.randn(2, 5, 4)  # (episodes, steps, dims): the last axis is the state's
    features = state_features(sequences, [-1])
    assert features.shape == (2, 5, 5)
    assert torch.allclose(features, state_features(sequences.reshape(10, 4), [3]).reshape(2, 5, 5))


def _episodes(states: torch.Tensor, lengths: list[int]) -> EpisodeTensors:
    n, t, _ = states.shape
    return EpisodeTensors(torch.zeros(n, t, 3, 8, 8, dtype=torch.uint8), torch.zeros(n, t, 2), torch.zeros(n, t, 2),
                          states, torch.tensor(lengths))


def test_the_readout_is_normalised_over_the_episodes_steps_and_not_their_padding():
    g = torch.Generator().manual_seed(0)
    states = torch.randn(3, 6, 2, generator=g) * torch.tensor([10.0, 0.5]) + torch.tensor([100.0, -3.0])
    states[0, 4:] = 1e4  # padding after episode 0's 4 steps: must not count
    readout = StateReadout(12, _episodes(states, [4, 6, 6]), angle_dims=[])
    valid = torch.cat([states[0, :4], states[1], states[2]])
    assert torch.allclose(readout.mean, valid.mean(0)) and torch.allclose(readout.std, valid.std(0))
    latents = torch.randn(5, 3, 4, generator=g)
    targets = valid[:5]
    expected = (readout.linear(latents.flatten(1)) - (targets - valid.mean(0)) / valid.std(0)).pow(2).mean()
    assert readout.loss(latents, targets).item() == pytest.approx(expected.item(), rel=1e-6)


class _PixelEncoder(torch.nn.Module):
    """A one-layer encoder: 4 tokens of 2 dims from the 8x8 frame's quadrants."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(48, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quadrants = x.unfold(2, 4, 4).unfold(3, 4, 4).permute(0, 2, 3, 1, 4, 5).reshape(x.shape[0], 4, 48)
        return self.proj(quadrants)


def _pretrain(weight: float, episodes: EpisodeTensors, steps: int = 30):
    encoder = _PixelEncoder()
    config = MetricPretrainConfig(steps=steps, batch_size=16, lr=1e-2, max_gap=2, target_scale=1.0,
                                  state_weights=(1.0, 1.0), state_readout_weight=weight, amp_bf16=False)
    readout = StateReadout(8, episodes, angle_dims=[]) if weight else None
    log = []
    pretrain_metric_encoder(encoder, episodes, 8, config, log=log.append, progress=False, readout=readout)
    return encoder, readout, log


def _pixel_episodes() -> EpisodeTensors:
    """Frames whose brightness in the left and right halves encodes the 2-dim state."""
    g = torch.Generator().manual_seed(1)
    states = torch.rand(4, 20, 2, generator=g)
    frames = torch.zeros(4, 20, 3, 8, 8, dtype=torch.uint8)
    frames[..., :4] = (states[..., 0, None, None, None] * 255).round().to(torch.uint8)
    frames[..., 4:] = (states[..., 1, None, None, None] * 255).round().to(torch.uint8)
    episodes = _episodes(states, [20] * 4)
    episodes.visual = frames
    return episodes


def test_the_readout_term_trains_the_encoder_with_the_metric_and_its_error_falls():
    episodes = _pixel_episodes()
    without, _, log_without = _pretrain(0.0, episodes)
    with_readout, _, log = _pretrain(1.0, episodes)
    assert "readout" not in log_without[0] and "readout" in log[0]
    # the same seed and pairs: only the readout's gradient tells the two encoders apart
    assert not torch.allclose(without.proj.weight, with_readout.proj.weight)
    # the logged loss is the metric loss plus the readout's, and the readout learned the state
    assert log[-1]["loss"] == pytest.approx(log[-1]["pull"] + 0.02 * log[-1]["push"] + log[-1]["readout"], rel=1e-5)
    assert log[-1]["readout"] < 0.5 * log[0]["readout"], (log[0], log[-1])


def test_a_readout_weight_needs_a_readout_and_must_not_be_negative():
    with pytest.raises(ConfigError, match="state_readout_weight"):
        MetricPretrainConfig(state_readout_weight=-1.0)
    with pytest.raises(ConfigError, match="StateReadout"):
        pretrain_metric_encoder(_PixelEncoder(), _pixel_episodes(), 8,
                                MetricPretrainConfig(steps=1, state_readout_weight=1.0), progress=False)


def _train(data, out, *overrides):
    return main(["train", "--config-name", "train_wall.yaml", f"dataset_path={data}", f"output_dir={out}",
                 "stages=[encoder]", "checkpoint_every=2", "encoder_pretrain.state_readout_weight=1.0", *TINY,
                 *overrides])


def test_wmquant_train_pretrains_with_the_readout_and_resumes_it(wall_data, tmp_path):
    out = tmp_path / "run"
    assert _train(wall_data, out, "encoder_pretrain.steps=4") == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "readout" in e] == [0, 3]
    # the checkpoint holds the readout with its normalisation, and the saved encoder has none of it
    saved = load_state(out / "checkpoints" / "encoder")
    assert set(saved["readout"]) == {"mean", "std", "linear.weight", "linear.bias"}
    assert not any("readout" in name or "linear" in name for name in load_file(str(out / "encoder" / "encoder.safetensors")))
    # an interrupted run (no final encoder yet) resumes from step 2 with the readout and its optimizer state
    (out / "encoder" / "encoder.safetensors").unlink()
    assert _train(wall_data, out, "encoder_pretrain.steps=4") == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "readout" in e] == [0, 3, 3]
    # the resumed readout is the checkpoint's: one whose weights were zeroed there ends elsewhere
    resumed = log[-2]["readout"]
    saved["readout"]["linear.weight"].zero_()
    save_state(out / "checkpoints" / "encoder", saved)
    (out / "encoder" / "encoder.safetensors").unlink()
    assert _train(wall_data, out, "encoder_pretrain.steps=4") == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-2]["step"] == 3 and log[-2]["readout"] != pytest.approx(resumed, rel=1e-3)


def test_a_negative_readout_weight_is_refused_in_one_line(wall_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(wall_data, out, "encoder_pretrain.steps=2", "encoder_pretrain.state_readout_weight=-0.5") == 2
    err = capsys.readouterr().err.strip()
    assert "state_readout_weight" in err and "-0.5" in err and len(err.splitlines()) == 1
    assert not out.exists()
