"""Rollout-aware calibration (`method=rollout`): quantization parameters learned so that the
quantized world model's multi-step rollouts, and its costs of candidate plans, match FP's.

Every method of the study calibrates one layer or one block at a time against a one-step output
error. The planner instead rolls the predictor out over its horizon on its own outputs and ranks
candidate plans by their final latent. This method learns, for every quantized Linear the
rollouts run through (the predictor's, and the action and proprio embeddings'):

* weight clipping as in OmniQuant's LWC: per (row, group) factors sigmoid(u), sigmoid(l) on the
  group's max and min (initialised at 4.0: 0.982);

by minimising, over the planning rollouts recorded during calibration (the CEM's own action
sequences from the calibration episodes' start latents),

    L = sum_t ||z_q(t) - z_fp(t)||^2 / sum_t ||z_fp(t)||^2            (every step of the horizon)
      + cost_weight * mean_i (c_q,i - c_fp,i)^2 / mean_i c_fp,i^2,    c_i = ||z_T,i - g||^2,

with the activations fake-quantized as at inference (per-token exactly; a static per-tensor range
taken from each batch, as OmniQuant's training does, since the calibrated range does not exist
yet), rounding passed straight through. g is the float model's final latent of the group's first
sequence (the CEM mean's prediction; the goal is not an input of the world model), so the cost
term asks the quantized model to rank a group's candidate plans as FP does. Optimiser: Adam,
`epochs` passes over the recorded groups, lr 5e-3; the parameters of the epoch with the lowest loss
over all recorded groups are kept (`keep_best`; false keeps the last epoch's).
The encoder acts before the recorded start latents, so its layers keep minmax ranges (RTN).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.utils.parametrize as parametrize
from torch import nn

from .. import qmath
from ..api import active_targets
from ..config import QuantConfig, QuantConfigError
from ..layers import WeightQParams, input_fake_quant_hook
from ..recorders import CalibrationData
from ._rollouts import mean_rollout_loss, replay_groups, rollout_loss
from .base import MethodResult, PTQMethod, check_positive, register_method


@dataclass
class RolloutOptions:
    epochs: int = 10
    lr: float = 5e-3
    cost_weight: float = 1.0
    lwc_init: float = 4.0
    keep_best: bool = True  # keep the epoch with the lowest loss over all recorded groups (or the last)
    n_sequences: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0:
            raise QuantConfigError(f"rollout epochs={self.epochs!r} must be an integer >= 0")
        check_positive(self, "lr", "n_sequences")
        if not isinstance(self.keep_best, bool):
            raise QuantConfigError(f"rollout keep_best={self.keep_best!r} must be true or false")
        if not isinstance(self.cost_weight, (int, float)) or self.cost_weight < 0:
            raise QuantConfigError(f"rollout cost_weight={self.cost_weight!r} must be >= 0")


class _ClippedWeight(nn.Module):
    """A parametrization: the weight fake-quantized with learnable clip factors (straight-through)."""

    def __init__(self, scheme, shape: tuple[int, int], init: float, like: torch.Tensor) -> None:
        super().__init__()
        self.scheme = scheme
        self.up = nn.Parameter(torch.full(shape, init, dtype=like.dtype, device=like.device))
        self.low = nn.Parameter(torch.full(shape, init, dtype=like.dtype, device=like.device))

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.sigmoid(self.up), torch.sigmoid(self.low)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        clip_max, clip_min = self.factors()
        s = self.scheme
        return qmath.fake_quantize_weight(weight, s.w_bits, s.w_group_size, s.w_symmetric, clip_max=clip_max,
                                          clip_min=clip_min, quantwm_scale=s.minmax_quantwm_scale, ste=True)


@register_method("rollout")
class RolloutAware(PTQMethod):
    display_name = "Rollout"
    needs_rollouts = True
    options = RolloutOptions

    def transform(self, model: nn.Module, qconfig: QuantConfig, calib: CalibrationData,
                  options: RolloutOptions) -> MethodResult:
        targets = [t for t in active_targets(model, qconfig)
                   if not t.is_tap and isinstance(t.module, nn.Linear) and not t.name.startswith("encoder.")]
        groups, references = replay_groups(model, calib.rollouts)
        frozen = [p for p in model.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        clips: dict[str, _ClippedWeight] = {}
        hooks = []
        try:
            for target in targets:
                layer, scheme = target.module, target.scheme
                if scheme.quantizes_weights:
                    shape = (layer.out_features, qmath.num_groups(layer.in_features, scheme.w_group_size))
                    clips[target.name] = _ClippedWeight(scheme, shape, options.lwc_init, layer.weight)
                    parametrize.register_parametrization(layer, "weight", clips[target.name], unsafe=True)
                if scheme.quantizes_activations:
                    hooks.append(layer.register_forward_pre_hook(input_fake_quant_hook(scheme)))
            history = [mean_rollout_loss(model, groups, references, options.cost_weight)]
            parameters = [p for clip in clips.values() for p in (clip.up, clip.low)]
            best, best_state = history[0], [p.detach().clone() for p in parameters]
            if parameters and options.epochs:
                optimizer = torch.optim.Adam(parameters, lr=options.lr)
                order = torch.Generator().manual_seed(options.seed)
                for _ in range(options.epochs):
                    for index in torch.randperm(len(groups), generator=order).tolist():
                        z0, act = groups[index]
                        loss = rollout_loss(model, z0, act, references[index], options.cost_weight)
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                    history.append(mean_rollout_loss(model, groups, references, options.cost_weight))
                    if history[-1] < best or not options.keep_best:
                        best, best_state = history[-1], [p.detach().clone() for p in parameters]
                with torch.no_grad():
                    for p, value in zip(parameters, best_state):
                        p.copy_(value)
        finally:
            for handle in hooks:
                handle.remove()
            for name in clips:
                parametrize.remove_parametrizations(model.get_submodule(name), "weight", leave_parametrized=False)
            for p in frozen:
                p.requires_grad_(True)
        qparams = {}
        for name, clip in clips.items():
            clip_max, clip_min = clip.factors()
            qparams[name] = WeightQParams(clip_max=clip_max.detach(), clip_min=clip_min.detach())
        report = {"loss_by_epoch": history, "kept_loss": best if clips else None, "layers": sorted(clips),
                  "rollout_sequences": sum(int(act.shape[0]) for _, act in groups)}
        return MethodResult(weight_qparams=qparams, report=report)
