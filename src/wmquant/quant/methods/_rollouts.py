"""What the planning-aware methods (rollout, mixed) score: recorded planning rollouts replayed
through the world model, against the float model's replay of the same action sequences.

A replay starts either from the recorded start latents (only the predictor and the action
embedding act) or, when the planners' observations were recorded with the rollouts, from the
model's own encoding of those observations: then the encoder and the proprio embedding act too,
as they do when the quantized model plans, and a third term asks the encoder to keep the latents
of every recorded frame (the goals among them)."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ..api import Target, active_targets
from ..config import QuantConfig
from ..recorders import CalibrationData, RecordedRollout


#: How the cost term compares the quantized model's costs of a group's candidates with FP's.
COST_TERMS = ("relative", "centered")


def plan_costs(latents: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each sequence's planning cost: the squared distance of its final visual latent to the goal
    g, the reference's final latent of the group's first sequence (see `rollout_loss`)."""
    goal = reference["visual"][:1, -1:]
    return (latents["visual"][:, -1:] - goal).pow(2).flatten(1).sum(dim=1)


def rollout_loss(model: nn.Module, z0: dict[str, torch.Tensor], act: torch.Tensor, reference: dict[str, torch.Tensor],
                 cost_weight: float, centered_cost_scale: float | None = None) -> torch.Tensor:
    """The horizon-wide latent error plus the cost error of one recorded group (differentiable):

        sum_t ||z(t) - z_ref(t)||^2 / sum_t ||z_ref(t)||^2 + cost_weight * cost error,

    with c_i = ||z_T,i - g||^2 and g = the reference's final latent of the group's first sequence
    (the CEM mean's prediction; the goal itself is not an input of the world model). Step 0 is the
    start latent itself, so an encoder error counts from the first step. The cost error is

      relative (centered_cost_scale None):  mean_i (c_i - c_ref,i)^2 / mean_i c_ref,i^2;
      centered:  mean_i (d_i - mean_j d_j)^2 / centered_cost_scale,  d_i = c_i - c_ref,i.

    Centering drops a shift common to the group's costs, which changes no ranking; the fixed scale
    (the replay's mean over groups of FP's cost variance) keeps a group whose candidates FP scores
    almost alike (a converged CEM) from weighing as much as one whose ranking is at stake."""
    got = model.rollout_latent(z0, act)
    err = sum((got[k] - reference[k]).pow(2).sum() for k in reference)
    norm = sum(reference[k].pow(2).sum() for k in reference)
    c_ref, c_got = plan_costs(reference, reference), plan_costs(got, reference)
    if centered_cost_scale is None:
        cost = (c_got - c_ref).pow(2).mean() / c_ref.pow(2).mean().clamp_min(1e-30)
    else:
        shift = c_got - c_ref
        cost = (shift - shift.mean()).pow(2).mean() / max(centered_cost_scale, 1e-30)
    return err / norm.clamp_min(1e-30) + cost_weight * cost


def relative_error(got: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum_k ||got_k - ref_k||^2 / sum_k ||ref_k||^2."""
    err = sum((got[k] - reference[k]).pow(2).sum() for k in reference)
    return err / sum(reference[k].pow(2).sum() for k in reference).clamp_min(1e-30)


def _encodes_with_grad(model: nn.Module) -> bool:
    encode = getattr(model, "encode_obs", None)
    return encode is not None and "track_grad" in inspect.signature(encode).parameters


class RolloutReplay:
    """The recorded groups (and frames) on the model's device and dtype, the float model's replay
    of them (built when the replay is made: make it before quantizing), and the loss against it.

    through_encoder: replay from the recorded observations when every group has them and the model
    can encode with autograd; `encoder_reason` says why not otherwise. cost_term: one of COST_TERMS
    (see `rollout_loss`)."""

    def __init__(self, model: nn.Module, calib: CalibrationData, cost_weight: float, encoder_weight: float,
                 through_encoder: bool, cost_term: str = "relative") -> None:
        if cost_term not in COST_TERMS:
            raise ValueError(f"cost_term={cost_term!r}; valid: {', '.join(COST_TERMS)}")
        param = next(model.parameters())
        self.cost_weight, self.encoder_weight = cost_weight, encoder_weight
        self.groups: list[RecordedRollout] = [group.to(param) for group in calib.rollouts]
        self.encoder_reason = None
        if not through_encoder:
            self.encoder_reason = "not asked (encoder=false)"
        elif not _encodes_with_grad(model):
            self.encoder_reason = "the model's encode_obs cannot track gradients (no track_grad argument)"
        elif any(group.observations is None for group in self.groups):
            missing = sum(group.observations is None for group in self.groups)
            self.encoder_reason = (f"{missing} of {len(self.groups)} recorded groups have no observations "
                                   "(their start latents were not encoded in the same planning step)")
        self.through_encoder = self.encoder_reason is None
        frames = calib.encoder_frames if self.through_encoder else None
        self.frames = None if frames is None else {k: v.to(param) for k, v in frames.items()}
        with torch.no_grad():
            # the float model's start latents, kept: a replay whose encoder computes in float reuses them
            self.float_starts = [self.start(model, group) for group in self.groups]
            self.references = [model.rollout_latent(z0, group.actions) for z0, group in zip(self.float_starts, self.groups)]
            self.frame_reference = None if self.frames is None else model.encode_obs(self.frames)
        self.centered_cost_scale = None
        if cost_term == "centered" and self.groups:
            spreads = [plan_costs(ref, ref).var(unbiased=False) for ref in self.references]
            self.centered_cost_scale = float(sum(spreads)) / len(spreads)

    @classmethod
    def with_options(cls, model: nn.Module, calib: CalibrationData, options) -> RolloutReplay:
        """The replay as a method's options ask (`cost_weight`, `encoder_weight`, `encoder`,
        `cost_term`)."""
        return cls(model, calib, options.cost_weight, options.encoder_weight, options.encoder, options.cost_term)

    def split_targets(self, model: nn.Module, qconfig: QuantConfig) -> tuple[list[Target], list[str]]:
        """The quantized layers (taps aside) that a replay runs through, which a method can measure,
        and the names of the others, which keep what their observers give them."""
        layers = [t for t in active_targets(model, qconfig) if not t.is_tap]
        replayed = set(self.layers_run_through(model, [t.name for t in layers]))
        return [t for t in layers if t.name in replayed], [t.name for t in layers if t.name not in replayed]

    @property
    def num_sequences(self) -> int:
        return sum(group.num_sequences for group in self.groups)

    def start(self, model: nn.Module, group: RecordedRollout) -> dict[str, torch.Tensor]:
        """The group's start latents: recorded, or the model's encoding of the recorded observations."""
        if not self.through_encoder:
            return group.z_obs_0
        z = model.encode_obs(group.observations, track_grad=torch.is_grad_enabled())
        return {k: v[group.start_index] for k, v in z.items()}

    def loss(self, model: nn.Module, index: int, float_encoder: bool = False) -> torch.Tensor:
        """Group `index`'s rollout loss, plus encoder_weight x the relative latent error of the
        recorded frames when the replay runs through the encoder.

        float_encoder: the caller knows that the encoder still computes as the float model did
        (it changed nothing in `encoder_layers`), so the float start latents are reused and the
        frames term, which is then zero, is skipped: the same loss without encoding anything."""
        group = self.groups[index]
        start = self.float_starts[index] if float_encoder else self.start(model, group)
        loss = rollout_loss(model, start, group.actions, self.references[index], self.cost_weight,
                            self.centered_cost_scale)
        if self.frames is not None and self.encoder_weight and not float_encoder:
            got = model.encode_obs(self.frames, track_grad=torch.is_grad_enabled())
            loss = loss + self.encoder_weight * relative_error(got, self.frame_reference)
        return loss

    def mean_loss(self, model: nn.Module, float_encoder: bool = False) -> float:
        """`loss` averaged over the groups, without autograd."""
        with torch.no_grad():
            total = sum(float(self.loss(model, index, float_encoder)) for index in range(len(self.groups)))
        return total / max(len(self.groups), 1)

    def layers_run_through(self, model: nn.Module, names: list[str]) -> list[str]:
        """Those of the named modules that a replay calls (in the given order)."""
        return _modules_called(model, names, lambda: self.loss(model, 0))

    def encoder_layers(self, model: nn.Module, names: list[str]) -> list[str]:
        """Those of the named modules that the replay's encoding calls (none when the replay starts
        from the recorded latents)."""
        if not self.through_encoder:
            return []
        return _modules_called(model, names, lambda: self.start(model, self.groups[0]))


def _modules_called(model: nn.Module, names: list[str], run) -> list[str]:
    """Those of the named modules that `run()` calls, without autograd (in the given order)."""
    called: set[str] = set()
    handles = [model.get_submodule(name).register_forward_pre_hook(lambda module, args, name=name: called.add(name))
               for name in names]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return [name for name in names if name in called]
