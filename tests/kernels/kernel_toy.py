"""Shared fixtures of the real-kernel tests: a one-Linear module tree, its config, Wall rollout inputs."""

from __future__ import annotations

import torch
from torch import nn

from wmquant.quant import QuantConfig, QuantScheme


def layer_model(in_features: int = 84, out_features: int = 40, seed: int = 0) -> nn.Module:
    """A module tree whose one Linear is named predictor.blocks.0.mlp.fc1 (a default target)."""
    torch.manual_seed(seed)
    root = nn.Module()
    root.predictor = nn.Module()
    root.predictor.blocks = nn.ModuleList([nn.Module()])
    root.predictor.blocks[0].mlp = nn.Module()
    root.predictor.blocks[0].mlp.fc1 = nn.Linear(in_features, out_features)
    with torch.no_grad():
        root.predictor.blocks[0].mlp.fc1.weight[:, :3] *= 8  # outlier input channels, as in real models
    return root


def layer_config(scheme: QuantScheme) -> QuantConfig:
    return QuantConfig(predictor=scheme, targets=("predictor.blocks.*.mlp.fc1",))


def wall_inputs(batch: int = 6, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(z0, actions) for `rollout_latent` of the shipped Wall model."""
    gen = torch.Generator().manual_seed(seed)
    z0 = {"visual": torch.randn(batch, 1, 64, 64, generator=gen), "proprio": torch.randn(batch, 1, 10, generator=gen)}
    return z0, torch.randn(batch, 5, 10, generator=gen)


def record_inputs(model: nn.Module, layer_types: tuple[type, ...]) -> tuple[dict[str, torch.Tensor], list]:
    """({name: first input}, hook handles) for every module of `layer_types`; remove the handles after."""
    inputs: dict[str, torch.Tensor] = {}

    def record(name):
        def hook(module, args):
            inputs.setdefault(name, args[0].detach())  # returns None: a returned tensor would replace the input
        return hook

    handles = [m.register_forward_pre_hook(record(n)) for n, m in model.named_modules() if isinstance(m, layer_types)]
    return inputs, handles
