"""The ViT predictor: frame-causal mask, upstream key names, and agreement with upstream's forward."""

from __future__ import annotations

import pytest
import torch

from wmquant.errors import CheckpointError, ConfigError
from wmquant.models.predictor import ViTPredictor, frame_causal_mask, upstream_predictor_key, upstream_predictor_state


def test_frame_causal_mask_by_hand():
    # Two patches per frame, three frames: token i may attend to token j iff frame(j) <= frame(i).
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(frame_causal_mask(2, 3), expected)


def test_mask_is_a_non_persistent_buffer_and_pos_embedding_is_standard_normal():
    torch.manual_seed(0)
    predictor = ViTPredictor(num_patches=16, num_frames=4, dim=24, depth=1, heads=2, dim_head=8, mlp_dim=32)
    assert predictor.mask.dtype == torch.bool and predictor.mask.shape == (64, 64)
    assert "mask" not in predictor.state_dict()
    assert predictor.pos_embedding.shape == (1, 64, 24)
    # N(0, 1) initialisation (upstream torch.randn), not a small truncated normal.
    assert 0.8 < predictor.pos_embedding.std().item() < 1.2
    assert predictor.blocks[0].attn.qkv.bias is None
    assert predictor.blocks[0].norm1.eps == predictor.norm.eps == 1e-5


@pytest.mark.parametrize("frames_given", [1, 2, 3])
def test_outputs_of_a_frame_do_not_depend_on_later_frames(frames_given):
    torch.manual_seed(0)
    patches, dim = 4, 16
    predictor = ViTPredictor(num_patches=patches, num_frames=3, dim=dim, depth=2, heads=2, dim_head=8, mlp_dim=32).eval()
    x = torch.randn(2, frames_given * patches, dim)
    with torch.no_grad():
        out = predictor(x)
        for t in range(frames_given - 1):
            changed = x.clone()
            changed[:, (t + 1) * patches :] = torch.randn_like(changed[:, (t + 1) * patches :]) * 5
            out_changed = predictor(changed)
            keep = (t + 1) * patches
            assert torch.equal(out_changed[:, :keep], out[:, :keep])
            assert (out_changed[:, keep:] - out[:, keep:]).abs().max() > 1e-2


def test_without_the_final_norm_the_output_is_the_residual_stream():
    torch.manual_seed(0)
    kwargs = dict(num_patches=4, num_frames=2, dim=16, depth=2, heads=2, dim_head=8, mlp_dim=32)
    normed = ViTPredictor(**kwargs).eval()
    bare = ViTPredictor(**kwargs, final_norm=False).eval()
    assert set(normed.state_dict()) - set(bare.state_dict()) == {"norm.weight", "norm.bias"}
    bare.load_state_dict({k: v for k, v in normed.state_dict().items() if not k.startswith("norm.")})
    x = torch.randn(3, 8, 16)
    with torch.no_grad():
        out = bare(x)
        assert torch.allclose(normed.norm(out), normed(x), atol=1e-6)  # the same stream, not normalised
    # token norms vary freely: a LayerNorm's output (unit gain, zero shift) has norm sqrt(dim) always
    assert out.norm(dim=-1).std() > 0.1 and torch.allclose(normed(x).norm(dim=-1), torch.full((3, 8), 4.0), atol=1e-3)


def test_input_lengths_are_checked():
    predictor = ViTPredictor(num_patches=4, num_frames=2, dim=16, depth=1, heads=2, dim_head=8, mlp_dim=32)
    with pytest.raises(ConfigError, match="12 tokens"):
        predictor(torch.randn(1, 12, 16))
    with pytest.raises(ConfigError, match="6 tokens"):
        predictor(torch.randn(1, 6, 16))


@pytest.mark.parametrize(
    ("upstream", "ours"),
    [
        ("pos_embedding", "pos_embedding"),
        ("transformer.norm.weight", "norm.weight"),
        ("transformer.layers.0.0.norm.weight", "blocks.0.norm1.weight"),
        ("transformer.layers.5.0.to_qkv.weight", "blocks.5.attn.qkv.weight"),
        ("transformer.layers.2.0.to_out.0.bias", "blocks.2.attn.proj.bias"),
        ("transformer.layers.3.1.net.0.bias", "blocks.3.norm2.bias"),
        ("transformer.layers.3.1.net.1.weight", "blocks.3.mlp.fc1.weight"),
        ("transformer.layers.3.1.net.4.weight", "blocks.3.mlp.fc2.weight"),
        ("transformer.layers.1.attn.to_qkv.weight", "blocks.1.attn.qkv.weight"),
        ("transformer.layers.1.ff.net.4.bias", "blocks.1.mlp.fc2.bias"),
        ("module.transformer.layers.0.attn.to_out.0.weight", "blocks.0.attn.proj.weight"),
    ],
)
def test_upstream_key_mapping(upstream, ours):
    assert upstream_predictor_key(upstream) == ours


@pytest.mark.parametrize("name", ["transformer.layers.0.1.net.2.weight", "transformer.layers.0.0.qact1.scale", "head.weight"])
def test_unknown_upstream_keys_are_refused(name):
    with pytest.raises(CheckpointError, match="not a DINO-WM predictor parameter"):
        upstream_predictor_key(name)


def test_upstream_state_dict_loads_and_agrees_with_upstream_forward(upstream):
    torch.manual_seed(0)
    patches, frames, dim = 4, 3, 20
    reference = upstream.ViTPredictor(
        num_patches=patches, num_frames=frames, dim=dim, depth=2, heads=4, mlp_dim=48, dim_head=6, dropout=0.1
    ).eval()
    predictor = ViTPredictor(patches, frames, dim, depth=2, heads=4, dim_head=6, mlp_dim=48).eval()
    state = upstream_predictor_state(reference.state_dict(), predictor, "test")
    predictor.load_state_dict(state, strict=True)
    x = torch.randn(3, 2 * patches, dim)
    with torch.no_grad():
        torch.testing.assert_close(predictor(x), reference(x), atol=1e-5, rtol=1e-5)


def test_a_stored_mask_must_be_the_frame_causal_mask(upstream):
    predictor = ViTPredictor(2, 2, 8, depth=1, heads=2, dim_head=4, mlp_dim=8)
    good = {"transformer.layers.0.0.bias": upstream.generate_mask_matrix(2, 2)}
    assert upstream_predictor_state(good, predictor, "ckpt") == {}
    bad = {"transformer.layers.0.0.bias": torch.ones(1, 1, 4, 4)}
    with pytest.raises(CheckpointError, match="not the frame-causal mask"):
        upstream_predictor_state(bad, predictor, "ckpt")
