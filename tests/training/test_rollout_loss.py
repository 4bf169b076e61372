"""The K-step rollout loss: the predictor rolled forward on its own predictions, compared with the
encoded truth at every step, with gradients through the chain."""

from __future__ import annotations

import pytest
import torch

from wmquant.errors import ConfigError
from wmquant.models.checkpoint import load_world_model, shipped_model_names
from wmquant.training.world_model import WorldModelTrainConfig, rollout_losses

pytestmark = pytest.mark.skipif("pusht" not in shipped_model_names(), reason="the shipped PushT model is missing")


def windows(model, frames: int, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = model.predictor.num_patches
    return {
        "visual_latent": torch.randn(batch, frames, tokens, model.visual_dim, generator=g),
        "proprio": torch.randn(batch, frames, 4, generator=g),
        "actions": torch.randn(batch, frames, 10, generator=g),
    }


def test_rollout_loss_is_the_autoregressive_error_of_every_predicted_frame():
    model, _ = load_world_model("pusht")
    model.eval()  # no dropout: the hand loop must see the same predictor
    n, steps = model.num_hist, 3
    data = windows(model, n + steps)
    loss = rollout_losses(model, data, steps)["rollout_loss"]

    proprio = model.proprio_encoder(data["proprio"])
    truth = model.assemble(data["visual_latent"], proprio, model.encode_act(data["actions"]))
    obs_end = model.visual_dim + model.proprio_dim
    z = truth[:, :n]
    errors = []
    for k in range(steps):  # each step sees the predictor's own earlier frames, never the truth
        next_frame = model.predict(z[:, -n:])[:, -1:]
        errors.append((next_frame[..., :obs_end] - truth[:, n + k : n + k + 1, :, :obs_end]) ** 2)
        z = torch.cat([z, model.replace_actions(next_frame, data["actions"][:, n + k : n + k + 1])], dim=1)
    torch.testing.assert_close(loss, torch.cat(errors, dim=1).mean())

    # one step is teacher forcing of the last frame
    one = rollout_losses(model, windows(model, n + 1, seed=1), 1)["rollout_loss"]
    data1 = windows(model, n + 1, seed=1)
    truth1 = model.assemble(data1["visual_latent"], model.proprio_encoder(data1["proprio"]), model.encode_act(data1["actions"]))
    torch.testing.assert_close(one, ((model.predict(truth1[:, :n])[:, -1, :, :obs_end] - truth1[:, n, :, :obs_end]) ** 2).mean())

    model.zero_grad(set_to_none=True)
    loss.backward()
    assert model.predictor.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.action_encoder.patch_embed.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.encoder.parameters())


@pytest.mark.parametrize("settings, key", [
    ({"steps": 0}, "training.steps"), ({"batch_size": 0}, "training.batch_size"),
    ({"rollout_steps": True}, "rollout_steps"), ({"rollout_steps": 2.0}, "rollout_steps"),
    ({"encoder_regularizer": "vicreg"}, "encoder_regularizer='vicreg'"), ({"sigreg_weight": -0.1}, "sigreg_weight"),
    ({"encoder_lr": "1e-4"}, "encoder_lr"), ({"sigreg_weight": float("nan")}, "sigreg_weight"),
])
def test_world_model_training_settings_name_the_bad_one(settings, key):
    with pytest.raises(ConfigError, match=key):
        WorldModelTrainConfig(**settings)


def test_the_smallest_world_model_training_settings_are_valid():
    config = WorldModelTrainConfig(steps=1, batch_size=1, rollout_steps=0, rollout_loss_weight=0.0, encoder_lr=0,
                                   encoder_anchor_weight=0.0, sigreg_weight=0.0, encoder_regularizer="sigreg")
    assert (config.steps, config.batch_size, config.encoder_regularizer) == (1, 1, "sigreg")


def test_rollout_settings_are_checked():
    with pytest.raises(ConfigError, match="rollout_steps"):
        WorldModelTrainConfig(rollout_steps=-1)
    with pytest.raises(ConfigError, match="rollout_loss_weight"):
        WorldModelTrainConfig(rollout_loss_weight=-0.5)
    model, _ = load_world_model("pusht")
    with pytest.raises(ConfigError, match="num_hist \\+ rollout_steps = 5"):
        rollout_losses(model, windows(model, 4), 2)
