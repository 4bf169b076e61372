"""GPTQ: lower output error than RTN summed over layers; weights reproduced exactly by quantize_."""

import pytest
import torch
from torch import nn

from quant_toy import calibration_runner, make_model, summed_layer_output_error
from wmquant.models.blocks import Block
from wmquant.quant import QuantConfig, QuantLinear, QuantScheme, calibrate_and_quantize, qmath
from wmquant.quant.api import dequantized_state
from wmquant.quant.methods.gptq import GPTQOptions, gptq_quantize

D = torch.float64


class WideModel(nn.Module):
    """A predictor-like stack of width 136 (not a multiple of 64) fed correlated, low-rank inputs."""

    def __init__(self, dim: int = 136, depth: int = 3) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.blocks = nn.ModuleList(Block(dim, 4, 2 * dim, dim_head=16, qkv_bias=False) for _ in range(depth))
        self.predictor = nn.Module()
        self.predictor.blocks = nn.ModuleList()
        gen = torch.Generator().manual_seed(9)
        self.register_buffer("mixing", torch.randn(12, dim, generator=gen) * torch.linspace(0.1, 3, dim))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        x = codes @ self.mixing
        for block in self.encoder.blocks:
            x = block(x)
        return x


def _runner(model, seed=0):
    def run():
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _ in range(4):
                model(torch.randn(8, 24, 12, generator=gen) + 0.05 * torch.randn(8, 24, 12, generator=gen))
    return run


@pytest.mark.parametrize("options", [{}, {"act_order": True}])
def test_gptq_beats_rtn_summed_over_layers(options):
    linears = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    config = QuantConfig(encoder=QuantScheme(w_bits=3, w_group_size=64),
                         targets=tuple(f"encoder.blocks.*.{name}" for name in linears))
    errors = {}
    for method in ("rtn", "gptq"):
        torch.manual_seed(1)
        reference = WideModel().eval()
        model = WideModel().eval()
        model.load_state_dict(reference.state_dict())
        calibrate_and_quantize(model, method, config, _runner(model), method_options=options if method == "gptq" else {})
        errors[method] = summed_layer_output_error(model, reference, _runner(reference, seed=0))
    assert errors["gptq"] < 0.8 * errors["rtn"]


def test_quantize_reproduces_gptq_weights_exactly():
    model = make_model()
    calibrate_and_quantize(model, "gptq", QuantConfig.uniform(w_bits=4, w_group_size=12), calibration_runner(model))
    state = dequantized_state(model)
    for name, layer in model.named_modules():
        if isinstance(layer, QuantLinear):
            assert torch.equal(state[f"{name}.weight"], layer.weight.detach()), name  # already on the grid
            assert layer.weight_quantizer.fixed_qparams


def test_diagonal_hessian_reduces_to_rtn():
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(7, 40, generator=gen, dtype=D)
    scheme = QuantScheme(w_bits=3, w_group_size=16)
    gram = torch.diag(torch.rand(40, generator=gen, dtype=D) + 0.5)  # independent inputs: nothing to compensate
    dequantized, qparams = gptq_quantize(w, gram, 100, scheme, GPTQOptions(block_size=8))
    assert torch.allclose(dequantized, qmath.fake_quantize_weight(w, 3, 16), atol=1e-12)
    assert qparams.scale.shape == (7, 3)


def test_dead_inputs_get_zero_weights():
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(5, 20, generator=gen, dtype=D)
    x = torch.randn(60, 20, generator=gen, dtype=D)
    x[:, 3] = 0
    dequantized, _ = gptq_quantize(w, x.T @ x, 60, QuantScheme(w_bits=4), GPTQOptions())
    assert dequantized[:, 3].abs().sum() == 0
