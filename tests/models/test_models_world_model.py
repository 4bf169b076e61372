"""WorldModel: token assembly, rollout semantics of spec 3.10, frame causality, training losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wmquant.errors import ConfigError
from wmquant.models import build_world_model, resolve_model_config


@pytest.fixture
def model_and_cfg(tiny):
    torch.manual_seed(0)
    cfg = tiny.config()
    return build_world_model(cfg).eval(), cfg


def _reference_rollout(model, obs_0, act):
    """Spec 3.10 as a literal loop over a list of frames, writing action features slot by slot."""
    b, n = obs_0["visual"].shape[:2]
    horizon = act.shape[1]
    encoded = model.encode_obs(obs_0)
    act_emb = model.action_encoder(act)
    v, p, a = model.visual_dim, model.proprio_dim, model.action_dim
    dp, da = model.proprio_encoder.emb_dim, model.action_encoder.emb_dim
    num_patches = encoded["visual"].shape[2]
    width = v + p + a

    def write_action(frame, t):
        for r in range(model.num_action_repeat):
            frame[..., v + p + r * da : v + p + (r + 1) * da] = act_emb[:, t, None, :]

    frames = []
    for k in range(n):
        frame = torch.empty(b, num_patches, width)
        frame[..., :v] = encoded["visual"][:, k]
        for r in range(model.num_proprio_repeat):
            frame[..., v + r * dp : v + (r + 1) * dp] = encoded["proprio"][:, k, None, :]
        write_action(frame, k)
        frames.append(frame)
    for t in range(n, horizon + 1):
        window = frames[max(0, len(frames) - model.num_hist) :]
        tokens = torch.stack(window, dim=1).reshape(b, len(window) * num_patches, width)
        prediction = model.predictor(tokens).reshape(b, len(window), num_patches, width)[:, -1].clone()
        if t < horizon:
            write_action(prediction, t)
        frames.append(prediction)
    z = torch.stack(frames, dim=1)
    return {"visual": z[..., :v], "proprio": z[:, :, 0, v : v + dp]}, z


@pytest.mark.parametrize(("frames_given", "horizon"), [(1, 5), (2, 4), (1, 1)])
def test_rollout_matches_literal_loop(model_and_cfg, tiny, frames_given, horizon):
    model, cfg = model_and_cfg
    obs, _ = tiny.batch(2, frames_given, cfg, seed=1)
    act = tiny.batch(2, horizon, cfg, seed=2)[1]
    with torch.no_grad():
        z_obs, z = model.rollout(obs, act)
        expected_obs, expected_z = _reference_rollout(model, obs, act)
    assert z.shape == (2, horizon + 1, 16, 16 + 8 + 15)
    assert z_obs["visual"].shape == (2, horizon + 1, 16, 16) and z_obs["proprio"].shape == (2, horizon + 1, 4)
    torch.testing.assert_close(z, expected_z, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(z_obs["proprio"], expected_obs["proprio"], atol=1e-6, rtol=1e-6)
    # Frame 0 is the encoded observation itself.
    with torch.no_grad():
        assert torch.equal(z_obs["visual"][:, 0], model.encode_obs(obs)["visual"][:, 0])


def test_rollout_window_slides_over_the_last_num_hist_frames(model_and_cfg, tiny):
    """num_hist 3, H 5: frames 4 and 5 come from windows {1,2,3} and {2,3,4}, not from frame 0."""
    model, cfg = model_and_cfg
    obs, _ = tiny.batch(1, 1, cfg, seed=3)
    act = tiny.batch(1, 5, cfg, seed=4)[1]
    with torch.no_grad():
        _, z = model.rollout(obs, act)
        frame_4 = model.predict(z[:, 1:4])[:, -1]
        frame_5 = model.predict(z[:, 2:5])[:, -1]
    assert torch.equal(z[:, 4, :, : -model.action_dim], frame_4[..., : -model.action_dim])
    assert torch.equal(z[:, 5], frame_5)  # the last frame keeps its predicted action features


def test_rollout_latent_accepts_expanded_latents(model_and_cfg, tiny):
    model, cfg = model_and_cfg
    obs, _ = tiny.batch(1, 1, cfg, seed=5)
    act = tiny.batch(4, 3, cfg, seed=6)[1]
    with torch.no_grad():
        z_obs_0 = model.encode_obs(obs)
        expanded = {k: v.expand(4, *v.shape[1:]) for k, v in z_obs_0.items()}
        assert expanded["visual"].stride(0) == 0
        materialised = {k: v.repeat(4, *([1] * (v.ndim - 1))) for k, v in z_obs_0.items()}
        from_expanded = model.rollout_latent(expanded, act)
        from_materialised = model.rollout_latent(materialised, act)
        from_obs, _ = model.rollout({k: v.repeat(4, *([1] * (v.ndim - 1))) for k, v in obs.items()}, act)
    for key in ("visual", "proprio"):
        assert torch.equal(from_expanded[key], from_materialised[key])
        torch.testing.assert_close(from_expanded[key], from_obs[key], atol=1e-5, rtol=1e-5)
    assert from_expanded["visual"].shape == (4, 4, 16, 16)


def test_predictions_of_a_frame_ignore_later_observations_and_actions(model_and_cfg, tiny):
    model, cfg = model_and_cfg
    obs, act = tiny.batch(2, 3, cfg, seed=7)
    with torch.no_grad():
        out = model.predict(model.encode(obs, act))
        for t in range(2):
            changed_obs = {k: v.clone() for k, v in obs.items()}
            changed_act = act.clone()
            changed_obs["visual"][:, t + 1 :] = -changed_obs["visual"][:, t + 1 :]
            changed_obs["proprio"][:, t + 1 :] += 3.0
            changed_act[:, t + 1 :] -= 2.0
            out_changed = model.predict(model.encode(changed_obs, changed_act))
            assert torch.equal(out_changed[:, : t + 1], out[:, : t + 1])
            assert not torch.allclose(out_changed[:, t + 1 :], out[:, t + 1 :])


def test_assemble_tiles_and_repeats_then_separates(model_and_cfg):
    model, _ = model_and_cfg
    visual, proprio, action = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 4), torch.randn(2, 3, 5)
    z = model.assemble(visual, proprio, action)
    assert z.shape == (2, 3, 16, 16 + 2 * 4 + 3 * 5)
    # Order visual | proprio x 2 | action x 3, identical on every patch.
    assert torch.equal(z[..., :16], visual)
    assert torch.equal(z[:, :, 7, 16:24], torch.cat([proprio, proprio], dim=-1))
    assert torch.equal(z[:, :, 11, 24:], torch.cat([action] * 3, dim=-1))
    z_obs, z_act = model.separate_emb(z)
    assert torch.equal(z_obs["visual"], visual) and torch.equal(z_obs["proprio"], proprio) and torch.equal(z_act, action)


def test_default_encoder_img_size_follows_the_predictor_grid(model_and_cfg):
    from wmquant.models import WorldModel

    model, _ = model_and_cfg
    rebuilt = WorldModel(model.encoder, model.proprio_encoder, model.action_encoder, model.predictor, frameskip=2,
                         num_proprio_repeat=2, num_action_repeat=3)
    assert rebuilt.encoder_img_size == 32  # 4 x 4 patches of 8 px


def test_encode_obs_resizes_with_antialiased_bilinear(tiny):
    torch.manual_seed(0)
    cfg = tiny.config(img_size=32, encoder_img_size=16, decoder=None)
    model = build_world_model(cfg).eval()
    obs, _ = tiny.batch(2, 2, cfg, seed=8)
    with torch.no_grad():
        encoded = model.encode_obs(obs)
        frames = F.interpolate(obs["visual"].flatten(0, 1), size=(16, 16), mode="bilinear", antialias=True)
        expected = model.encoder(frames).unflatten(0, (2, 2))
    assert encoded["visual"].shape == (2, 2, 4, 16)
    assert torch.equal(encoded["visual"], expected)


def test_dinov2_config_resolves_dino_wm_encoder_size():
    cfg = resolve_model_config({"proprio_dim": 4, "action_dim": 2})
    assert cfg["encoder"]["preset"] == "dinov2_vits14" and cfg["encoder_img_size"] == 196
    assert cfg["predictor"] == {"depth": 6, "heads": 16, "dim_head": 64, "mlp_dim": 2048, "dropout": 0.1, "emb_dropout": 0.0,
                                "final_norm": True}
    assert cfg["decoder"]["channel"] == 384 and cfg["decoder"]["n_res_block"] == 4 and cfg["decoder"]["n_res_channel"] == 128


def test_training_losses_and_where_their_gradients_go(model_and_cfg, tiny):
    model, cfg = model_and_cfg
    model.train()
    assert not model.encoder.training and model.predictor.training
    obs, act = tiny.batch(2, 4, cfg, seed=9)
    torch.manual_seed(1)
    losses = model(obs, act)
    torch.manual_seed(1)  # same dropout masks for the hand computation
    z = model.encode(obs, act)
    z_pred = model.predict(z[:, :3])
    obs_end = model.visual_dim + model.proprio_dim
    expected_z_loss = ((z_pred[..., :obs_end] - z[:, 1:, :, :obs_end]) ** 2).mean()
    expected_visual = ((z_pred[..., :16] - z[:, 1:, :, :16]) ** 2).mean()
    expected_recon = ((model.decode_visual(z[..., :16]) - obs["visual"]) ** 2).mean()
    torch.testing.assert_close(losses["z_loss"], expected_z_loss)
    torch.testing.assert_close(losses["z_visual_loss"], expected_visual)
    torch.testing.assert_close(losses["decoder_recon_loss"], expected_recon)
    torch.testing.assert_close(losses["loss"], expected_z_loss + expected_recon)

    losses["z_loss"].backward(retain_graph=True)
    assert all(p.grad is None for p in model.decoder.parameters())
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.predictor.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.action_encoder.patch_embed.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    losses["decoder_recon_loss"].backward()
    assert all(p.grad is None for p in model.predictor.parameters())
    assert model.decoder.dec.blocks[0].weight.grad.abs().sum() > 0


def test_inconsistent_settings_are_refused(tiny):
    with pytest.raises(ConfigError, match="concat_dim=0"):
        build_world_model(tiny.config(concat_dim=0))
    with pytest.raises(ConfigError, match="num_pred=2"):
        build_world_model(tiny.config(num_pred=2))
    with pytest.raises(ConfigError, match=r"decoder outputs 64 px .* img_size is 32"):
        build_world_model(tiny.config(decoder={"channel": 8, "upsample_stride": 4, "decode_stride": 4}))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['heads_'\] in model config section 'predictor'"):
        build_world_model(tiny.config(predictor={"heads_": 3}))
    with pytest.raises(ConfigError, match="needs \\['proprio_dim'\\]"):
        build_world_model({"action_dim": 2})
    with pytest.raises(ConfigError, match="need num_hist \\+ 1 = 4 frames, got 3"):
        model = build_world_model(tiny.config())
        model(*tiny.batch(1, 3, tiny.config()))
    with pytest.raises(ConfigError, match="no decoder"):
        build_world_model(tiny.config(decoder=None)).decode_visual(torch.zeros(1, 1, 16, 16))
