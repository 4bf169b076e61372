"""DINOv2 and small ViT encoders: outputs against an independent reference, weight files in the
torch-hub and Hugging Face layouts, and the errors for files that do not fit."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from wmquant.errors import CheckpointError, ConfigError
from wmquant.models.vit import VisionTransformer, dinov2_vit, load_dinov2_weights

DIM, DEPTH, HEADS = 384, 2, 6  # ViT-S/14 width and heads; two blocks keep the test fast


def _images(batch: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture
def hub_file(tmp_path, reference):
    state = reference.random_dinov2_state(DIM, DEPTH, HEADS)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    return path, state


def _write_hf_dir(directory, tensors, **config_overrides):
    directory.mkdir()
    config = {
        "model_type": "dinov2",
        "hidden_size": DIM,
        "num_hidden_layers": DEPTH,
        "num_attention_heads": HEADS,
        "mlp_ratio": 4,
        "patch_size": 14,
        "image_size": 518,
        "layer_norm_eps": 1e-6,
        "qkv_bias": True,
        "hidden_act": "gelu",
        "use_swiglu_ffn": False,
        "layerscale_value": 1.0,
    }
    config.update(config_overrides)
    (directory / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(directory / "model.safetensors"))
    return directory


def test_hub_state_dict_matches_reference_forward(hub_file, reference):
    path, state = hub_file
    model = dinov2_vit("dinov2_vits14", depth=DEPTH).eval()
    load_dinov2_weights(model, path)
    images = _images(2, 56)  # 4 x 4 patches: the 37 x 37 position grid is interpolated
    with torch.no_grad():
        tokens = model(images)
    expected = dinov2_reference_call(reference, state, images)
    assert tokens.shape == (2, 16, DIM)
    torch.testing.assert_close(tokens, expected, atol=2e-5, rtol=1e-5)


def dinov2_reference_call(reference, state, images, **kwargs):
    return reference.dinov2(state, images, heads=HEADS, **kwargs)


def test_interpolation_uses_dinov2_offset_not_plain_resize(hub_file, reference):
    path, state = hub_file
    model = dinov2_vit("dinov2_vits14", depth=DEPTH).eval()
    load_dinov2_weights(model, path)
    images = _images(1, 56)
    with torch.no_grad():
        tokens = model(images)
    size_form = dinov2_reference_call(reference, state, images, offset=0.0)
    # The 0.1 offset changes the sampling grid, so a size-based resize gives other tokens.
    assert (tokens - size_form).abs().max() > 1e-3


def test_hf_directory_gives_the_same_outputs_as_the_hub_file(tmp_path, hub_file, reference):
    path, state = hub_file
    hf_dir = _write_hf_dir(tmp_path / "dinov2-small", reference.hub_to_hf_names(state, DIM))
    from_hub = dinov2_vit("dinov2_vits14", depth=DEPTH).eval()
    from_hf = dinov2_vit("dinov2_vits14", depth=DEPTH).eval()
    load_dinov2_weights(from_hub, path)
    load_dinov2_weights(from_hf, hf_dir)
    for name, tensor in from_hub.state_dict().items():
        assert torch.equal(tensor, from_hf.state_dict()[name]), name
    images = _images(2, 42)
    with torch.no_grad():
        assert torch.equal(from_hub(images), from_hf(images))


def test_registers_variant_matches_reference(tmp_path, reference):
    state = reference.random_dinov2_state(DIM, 1, HEADS, num_registers=4, seed=3)
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(state, path)
    model = dinov2_vit("dinov2_vits14_reg", depth=1).eval()
    load_dinov2_weights(model, path)
    images = _images(2, 70)
    with torch.no_grad():
        tokens = model(images)
    # The _reg hub models interpolate to the target size with antialiasing and no offset.
    expected = dinov2_reference_call(reference, state, images, num_registers=4, offset=0.0, antialias=True)
    assert tokens.shape == (2, 25, DIM)
    torch.testing.assert_close(tokens, expected, atol=2e-5, rtol=1e-5)


def test_transformers_dinov2_model_directory_loads_and_agrees(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14, layerscale_value=0.7
    )
    torch.manual_seed(0)
    hf_model = transformers.Dinov2Model(config).eval()
    with torch.no_grad():
        for parameter in hf_model.parameters():  # make every tensor non-trivial (LayerNorms start at 1/0)
            parameter.add_(torch.randn_like(parameter) * 0.1)
    hf_model.save_pretrained(tmp_path / "hf")
    model = dinov2_vit("dinov2_vits14", dim=32, depth=2, heads=2, img_size=28).eval()
    load_dinov2_weights(model, tmp_path / "hf")
    images = _images(3, 28)  # the native 2 x 2 grid: no position interpolation on either side
    with torch.no_grad():
        expected = hf_model(pixel_values=images).last_hidden_state[:, 1:]
        torch.testing.assert_close(model(images), expected, atol=1e-5, rtol=1e-5)


def test_missing_and_unexpected_keys_name_the_file_and_keys(tmp_path, reference):
    state = reference.random_dinov2_state(DIM, DEPTH, HEADS)
    model = dinov2_vit("dinov2_vits14", depth=DEPTH)

    missing = dict(state)
    del missing["blocks.1.ls2.gamma"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing\.pth.*missing keys \[blocks\.1\.ls2\.gamma\]"):
        load_dinov2_weights(model, tmp_path / "missing.pth")

    extra = dict(state, **{"blocks.2.norm1.weight": torch.ones(DIM)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"extra\.pth.*unexpected keys \[blocks\.2\.norm1\.weight\]"):
        load_dinov2_weights(model, tmp_path / "extra.pth")

    hf = reference.hub_to_hf_names(state, DIM)
    hf["encoder.layer.0.attention.attention.extra.weight"] = torch.zeros(1)
    _write_hf_dir(tmp_path / "hf_extra", hf)
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*unexpected keys.*attention\.attention\.extra"):
        load_dinov2_weights(model, tmp_path / "hf_extra")

    hf = reference.hub_to_hf_names(state, DIM)
    del hf["encoder.layer.1.attention.attention.value.bias"]
    _write_hf_dir(tmp_path / "hf_no_value", hf)
    with pytest.raises(CheckpointError, match=r"layer 1 is missing attention value bias"):
        load_dinov2_weights(model, tmp_path / "hf_no_value")


def test_shape_and_architecture_mismatches_are_refused(tmp_path, reference):
    state = reference.random_dinov2_state(DIM, DEPTH, HEADS)
    torch.save(state, tmp_path / "s.pth")
    wrong_grid = dinov2_vit("dinov2_vits14", depth=DEPTH, img_size=224)  # 16 x 16 position grid
    with pytest.raises(CheckpointError, match=r"'pos_embed' has shape \(1, 1370, 384\) but the model expects \(1, 257, 384\)"):
        load_dinov2_weights(wrong_grid, tmp_path / "s.pth")

    hf_dir = _write_hf_dir(tmp_path / "hf", reference.hub_to_hf_names(state, DIM), num_attention_heads=12)
    with pytest.raises(CheckpointError, match=r"config\.json.*num_attention_heads 12 \(model: 6\)"):
        load_dinov2_weights(dinov2_vit("dinov2_vits14", depth=DEPTH), hf_dir)


def test_unreadable_weight_files(tmp_path, hub_file):
    path, _ = hub_file
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:5000])
    model = dinov2_vit("dinov2_vits14", depth=DEPTH)
    with pytest.raises(CheckpointError, match="truncated.pth"):
        load_dinov2_weights(model, truncated)
    with pytest.raises(CheckpointError, match="no such file or directory"):
        load_dinov2_weights(model, tmp_path / "absent.pth")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CheckpointError, match=r"empty_dir/config\.json: missing"):
        load_dinov2_weights(model, tmp_path / "empty_dir")


def test_presets_and_refusals():
    with pytest.raises(ConfigError, match="SwiGLU"):
        dinov2_vit("dinov2_vitg14")
    with pytest.raises(ConfigError, match="unknown DINOv2 preset 'dinov2_vitx14'"):
        dinov2_vit("dinov2_vitx14")
    with torch.device("meta"):
        base = dinov2_vit("dinov2_vitb14")
    assert (base.dim, len(base.blocks), base.heads, base.mlp_dim, base.patch_size) == (768, 12, 12, 3072, 14)
    assert base.pos_embed.shape == (1, 1 + 37 * 37, 768)
    names = set(base.state_dict())
    assert {"cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight", "blocks.11.ls2.gamma", "norm.bias"} <= names
    assert base.blocks[0].norm1.eps == 1e-6


def test_own_encoder_without_cls_token_and_with_head():
    torch.manual_seed(0)
    encoder = VisionTransformer(img_size=32, patch_size=8, dim=24, depth=2, heads=3, cls_token=False, out_dim=12).eval()
    assert encoder.cls_token is None and encoder.emb_dim == 12
    images = _images(2, 32)
    with torch.no_grad():
        tokens = encoder(images)
        features = encoder.forward_features(images)
    assert tokens.shape == (2, 16, 12)
    torch.testing.assert_close(tokens, encoder.head(features))
    # Another input size interpolates the 4 x 4 position grid to 6 x 6.
    with torch.no_grad():
        assert encoder(_images(1, 48)).shape == (1, 36, 12)
    with pytest.raises(ConfigError, match="not a multiple of the encoder patch size 8"):
        encoder(_images(1, 30))
