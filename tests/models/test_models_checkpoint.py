"""wmquant checkpoints (model.safetensors + config.yaml): exact round trips and bad files."""

from __future__ import annotations

import pytest
import torch
import yaml

from wmquant.errors import CheckpointError, ConfigError
from wmquant.models import build_world_model, checkpoint, load_world_model, save_world_model


@pytest.fixture
def saved(tmp_path, tiny):
    torch.manual_seed(0)
    cfg = tiny.config()
    model = build_world_model(cfg).eval()
    out = save_world_model(model, cfg, tmp_path / "run" / "model", extra={"normalization": {"action_mean": torch.tensor([0.5, -1.0])}})
    return model, cfg, out


def _rollout(model, tiny, cfg):
    obs, _ = tiny.batch(2, 1, cfg, seed=11)
    act = tiny.batch(2, 4, cfg, seed=12)[1]
    with torch.no_grad():
        return model.rollout(obs, act)[1]


def test_train_save_load_gives_bit_identical_outputs(tmp_path, tiny):
    torch.manual_seed(0)
    cfg = tiny.config()
    model = build_world_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(3):
        obs, act = tiny.batch(2, 4, cfg, seed=step)
        optimizer.zero_grad()
        model(obs, act)["loss"].backward()
        optimizer.step()
    model.eval()
    out = save_world_model(model, cfg, tmp_path / "trained")
    loaded, document = load_world_model(out)
    assert not loaded.training
    assert document["model"] == checkpoint.resolve_model_config(cfg)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert torch.equal(_rollout(model, tiny, cfg), _rollout(loaded, tiny, cfg))
    with torch.no_grad():
        z = loaded.rollout(*_first_obs_and_actions(tiny, cfg))[1]
        assert torch.equal(model.decode_visual(z[..., :16]), loaded.decode_visual(z[..., :16]))


def test_a_predictor_without_its_final_norm_saves_and_loads(tmp_path, tiny):
    torch.manual_seed(0)
    base = tiny.config()
    cfg = tiny.config(predictor={**base["predictor"], "final_norm": False})
    model = build_world_model(cfg).eval()
    assert isinstance(model.predictor.norm, torch.nn.Identity)
    loaded, document = load_world_model(save_world_model(model, cfg, tmp_path / "bare"))
    assert document["model"]["predictor"]["final_norm"] is False
    assert isinstance(loaded.predictor.norm, torch.nn.Identity) and "predictor.norm.weight" not in loaded.state_dict()
    assert torch.equal(_rollout(model, tiny, cfg), _rollout(loaded, tiny, cfg))


def _first_obs_and_actions(tiny, cfg):
    obs, _ = tiny.batch(1, 1, cfg, seed=13)
    return obs, tiny.batch(1, 2, cfg, seed=14)[1]


def test_config_yaml_holds_the_model_and_extra_sections(saved):
    _, _, out = saved
    document = yaml.safe_load((out / "config.yaml").read_text())
    assert document["model"]["encoder"]["backend"] == "vit"
    assert document["normalization"] == {"action_mean": [0.5, -1.0]}
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.safetensors"]


def test_saving_again_replaces_the_directory(saved, tiny):
    _, cfg, out = saved
    torch.manual_seed(5)
    other = build_world_model(cfg).eval()
    save_world_model(other, cfg, out)
    loaded, document = load_world_model(out)
    assert "normalization" not in document
    assert torch.equal(loaded.predictor.pos_embedding, other.predictor.pos_embedding)


def test_shared_tensors_are_saved_once_and_restored(tmp_path, tiny):
    torch.manual_seed(0)
    cfg = tiny.config()
    model = build_world_model(cfg).eval()
    codebook = model.decoder.quantize_b
    codebook.embed_avg = codebook.embed  # tied buffers, which safetensors alone refuses to write
    out = save_world_model(model, cfg, tmp_path / "tied")
    loaded, _ = load_world_model(out)
    assert torch.equal(loaded.decoder.quantize_b.embed_avg, codebook.embed)


def test_bad_weight_files_name_the_file(saved):
    _, _, out = saved
    weights = out / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        load_world_model(out)
    weights.write_bytes(b"\x07" * 100)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        load_world_model(out)
    weights.unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing weights file"):
        load_world_model(out)


def test_missing_or_broken_config(saved):
    _, _, out = saved
    config = out / "config.yaml"
    config.write_text("model: [unclosed")
    with pytest.raises(CheckpointError, match=r"config\.yaml: not valid YAML"):
        load_world_model(out)
    config.unlink()
    with pytest.raises(CheckpointError, match=r"config\.yaml: missing"):
        load_world_model(out)


def test_config_shapes_that_do_not_match_the_weights(saved):
    _, _, out = saved
    config = out / "config.yaml"
    document = yaml.safe_load(config.read_text())
    document["model"]["predictor"]["mlp_dim"] = 40
    config.write_text(yaml.safe_dump(document))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: weights: tensor 'predictor\.blocks\.0\.mlp\.fc1\.weight' has shape \(32, 39\) but the model expects \(40, 39\)"):
        load_world_model(out)
    document["model"]["predictor"]["mlp_dim"] = 32
    document["model"]["predictor"]["depth"] = 3
    config.write_text(yaml.safe_dump(document))
    with pytest.raises(CheckpointError, match=r"missing keys \[predictor\.blocks\.2\."):
        load_world_model(out)
    document["model"]["predictor"]["depth"] = 2
    document["model"]["predictor"]["depht"] = 2
    config.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError, match=r"config\.yaml: unknown key\(s\) \['depht'\]"):
        load_world_model(out)


def test_save_refuses_a_config_that_does_not_describe_the_model(saved, tmp_path, tiny):
    model, _, _ = saved
    with pytest.raises(ConfigError, match=r"does not describe this model.*action_encoder\.patch_embed"):
        save_world_model(model, tiny.config(action_emb_dim=6), tmp_path / "x")
    # Same tensor shapes (1 x 4 = 2 x 2 action inputs), different frameskip.
    with pytest.raises(ConfigError, match="frameskip=4 in the config, 2 in the model"):
        save_world_model(model, tiny.config(action_dim=1, frameskip=4), tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_names_resolve_to_shipped_models(saved, tmp_path, monkeypatch, tiny, capsys):
    model, cfg, out = saved
    shipped = tmp_path / "assets"
    save_world_model(model, cfg, shipped / "tiny_wall")
    monkeypatch.setattr(checkpoint, "_shipped_models_root", lambda: shipped)
    monkeypatch.chdir(tmp_path)
    assert checkpoint.shipped_model_names() == ["tiny_wall"]
    loaded, _ = load_world_model("tiny_wall")
    assert torch.equal(_rollout(loaded, tiny, cfg), _rollout(model, tiny, cfg))
    with pytest.raises(CheckpointError, match=r"unknown model name 'pusht_big'.*shipped: tiny_wall"):
        load_world_model("pusht_big")
    with pytest.raises(CheckpointError, match="no such model directory"):
        load_world_model(tmp_path / "nowhere" / "model")
    from wmquant.commands.models import models_main

    assert models_main([]) == 0
    assert capsys.readouterr().out == (
        "tiny_wall: env ?, 32 px, encoder vit/8 dim 16 depth 1, predictor depth 2, num_hist 3, frameskip 2\n"
    )
