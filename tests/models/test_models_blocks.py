"""The shared transformer block's attention: the fused path and the explicit path that a
quantization recipe takes when it puts quantizers on the attention matmuls' inputs (the taps)."""

from __future__ import annotations

import torch
from torch import nn

from wmquant.models.blocks import Attention, Block
from wmquant.models.predictor import frame_causal_mask


class _Recording(nn.Module):
    """A tap that passes its input on (times `factor`) and keeps a copy."""

    def __init__(self, factor: float = 1.0) -> None:
        super().__init__()
        self.factor = factor
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return x * self.factor


def _attention(seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    return Attention(dim=12, num_heads=3, dim_head=5).eval()  # inner width 15: dim_head is not dim / heads


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(2, 6, 12) * 3, frame_causal_mask(num_patches=2, num_frames=3)


def test_the_explicit_path_computes_what_the_fused_path_does():
    x, mask = _inputs()
    for attend in (None, mask):
        fused = _attention()(x, attend)
        explicit = _attention()
        explicit.probs_tap = _Recording()
        assert torch.allclose(explicit(x, attend), fused, atol=1e-5), attend
        assert len(explicit.probs_tap.seen) == 1  # a tap that is not the identity is used


def test_the_probability_tap_sees_softmax_rows_that_respect_the_mask():
    x, mask = _inputs()
    attention = _attention()
    attention.probs_tap = _Recording()
    attention(x, mask)
    probs = attention.probs_tap.seen[0]
    assert probs.shape == (2, 3, 6, 6)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 3, 6))
    assert (probs[..., ~mask] == 0).all() and (probs[..., mask] > 0).all()


def test_the_q_k_v_taps_see_each_head_and_their_outputs_are_used():
    x, _ = _inputs()
    attention = _attention()
    attention.q_tap, attention.k_tap, attention.v_tap = _Recording(), _Recording(), _Recording(2.0)
    doubled_v = attention(x)
    for tap in (attention.q_tap, attention.k_tap, attention.v_tap):
        assert tap.seen[0].shape == (2, 3, 6, 5)
    plain = _attention()
    # v doubled: the heads' output doubles before the projection (whose bias stays)
    expected = 2 * (plain(x) - plain.proj.bias) + plain.proj.bias
    assert torch.allclose(doubled_v, expected, atol=1e-5)
    # q set to zero: every query attends uniformly, so each token gets the projected mean of v
    zero_q = _attention()
    zero_q.q_tap = _Recording(0.0)
    v = zero_q.v_tap(zero_q.qkv(x).view(2, 6, 3, 3, 5)[:, :, 2])  # (B, N, heads, dim_head)
    mean_v = v.mean(1, keepdim=True).expand(2, 6, 3, 5).reshape(2, 6, 15)
    assert torch.allclose(zero_q(x), zero_q.proj(mean_v), atol=1e-5)


def test_attention_dropout_acts_in_training_only():
    x, _ = _inputs()
    torch.manual_seed(0)
    attention = Attention(dim=12, num_heads=3, attn_drop=0.5)
    attention.probs_tap = _Recording()
    attention.eval()
    assert torch.equal(attention(x), attention(x))
    attention.train()
    assert not torch.allclose(attention(x), attention(x))


def test_a_block_adds_each_branch_to_its_residual():
    torch.manual_seed(0)
    block = Block(dim=12, num_heads=3, mlp_dim=24, layerscale_init=0.5).eval()
    x, mask = _inputs()
    after_attention = x + 0.5 * block.attn(block.norm1(x), mask)
    expected = after_attention + 0.5 * block.mlp(block.norm2(after_attention))
    assert torch.allclose(block(x, mask), expected, atol=1e-6)
