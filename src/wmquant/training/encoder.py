"""Self-supervised pretraining of wmquant's own ViT encoders with a temporal-metric objective.

Why this objective. The planner's cost is the latent MSE to the goal, so what matters is the shape
of that cost over the state space, not how well the latent reconstructs pixels. A prototype found
MAE-trained ViTs predict well but plan badly (0.10-0.68 on Wall): their latent distance is flat
beyond ~16 px and aliased on the patch grid, so CEM sees false minima. Training the encoder so that
latent distance between two frames of one episode matches how far the system moved between them
makes the cost decrease monotonically towards the goal; with only short-range pairs plus a push-apart
term on unrelated frames, the embedding becomes locally isometric, and distances across a wall grow
like the path through the door (a geodesic), which is what the planner needs.

The objective, for pairs (t, t+k) of one episode, k uniform in 1..max_gap:
    d     = sqrt(mean over tokens of sum over channels of (z_t - z_{t+k})^2)
    delta = |W (s_{t+k} - s_t)| / target_scale      (target="state": observed displacement)
          = k / target_scale                          (target="time": time gap only)
    loss  = (d - delta)^2 + w * relu(margin - d_neg)  (d_neg: frames of different episodes)
with w annealed from push_weight[0] to push_weight[1]. State differences use the dataset's recorded
states (angles wrapped); this is the only place wmquant uses states, and the world model and planner
never see them. After training, one global scale sets the latents' per-element variance to 1.

Optionally (`state_readout_weight` > 0) a linear readout from the flattened tokens to the normalised
state (each angle as its cosine and sine) is trained with the encoder, and its mean squared error is
added to the loss with that weight. Why: the metric target is one scalar per pair, dominated by
whatever moves most (PushT's agent moves about 4x as far as its block), so the latent can satisfy it
while blurring the slower block; the readout asks that every state coordinate be linearly present in
the tokens. The readout is dropped after pretraining.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.transforms import to_model_input
from ..errors import ConfigError
from .batches import EpisodeTensors
from .state import cosine_lr

TARGETS = ("state", "time")


@dataclass
class MetricPretrainConfig:
    steps: int = 5000
    batch_size: int = 256
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    max_gap: int = 16
    target: str = "state"
    target_scale: float = 10.0
    state_weights: Sequence[float] = (1.0, 1.0)
    angle_dims: Sequence[int] = ()
    push_margin: float = 8.0
    push_weight: tuple[float, float] = (0.2, 0.02)
    state_readout_weight: float = 0.0
    seed: int = 0
    amp_bf16: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ConfigError(f"unknown encoder pretraining target {self.target!r}; valid: {', '.join(TARGETS)}")
        if self.max_gap < 1 or self.steps < 0 or self.batch_size < 2:
            raise ConfigError(f"encoder pretraining needs steps >= 0 (0: none), batch_size >= 2 and max_gap >= 1, "
                              f"got {self.steps}, {self.batch_size} and {self.max_gap}")
        if not self.state_readout_weight >= 0:
            raise ConfigError(f"encoder_pretrain.state_readout_weight must be >= 0 (0: no readout), "
                              f"got {self.state_readout_weight}")


def latent_distance(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """(B, N, D) x2 -> (B,): sqrt of the mean over tokens of the squared L2 distance per token."""
    return ((z1 - z2).pow(2).sum(-1).mean(-1) + 1e-8).sqrt()


def state_displacement(s1: torch.Tensor, s2: torch.Tensor, weights: torch.Tensor, angle_dims: Sequence[int]) -> torch.Tensor:
    diff = s2 - s1
    for dim in angle_dims:
        diff[:, dim] = torch.remainder(diff[:, dim] + math.pi, 2 * math.pi) - math.pi
    return (diff * weights).norm(dim=-1)


def state_features(states: torch.Tensor, angle_dims: Sequence[int]) -> torch.Tensor:
    """(..., S) -> (..., S + len(angle_dims)): the non-angle dims as they are, then each angle's cos and sin."""
    angles = sorted(set(int(d) % states.shape[-1] for d in angle_dims))
    keep = [d for d in range(states.shape[-1]) if d not in angles]
    parts = [states[..., keep]]
    for dim in angles:
        parts += [states[..., dim:dim + 1].cos(), states[..., dim:dim + 1].sin()]
    return torch.cat(parts, dim=-1)


class StateReadout(nn.Module):
    """A linear map from an encoder's flattened tokens to the state features, normalised by their mean
    and std over the training episodes' steps (kept as buffers, so a checkpoint restores them)."""

    def __init__(self, latent_numel: int, episodes: EpisodeTensors, angle_dims: Sequence[int]) -> None:
        super().__init__()
        self.angle_dims = tuple(int(d) for d in angle_dims)
        valid = torch.arange(episodes.states.shape[1], device=episodes.states.device)[None] < episodes.lengths[:, None]
        features = state_features(episodes.states[valid].float(), self.angle_dims)
        self.register_buffer("mean", features.mean(0))
        self.register_buffer("std", features.std(0).clamp(min=1e-6))
        self.linear = nn.Linear(latent_numel, features.shape[-1])

    def loss(self, latents: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """Mean squared error of the readout of (B, N, D) latents against (B, S) states, in std units."""
        target = (state_features(states, self.angle_dims) - self.mean) / self.std
        return (self.linear(latents.flatten(1)) - target).pow(2).mean()


def sample_pairs(episodes: EpisodeTensors, batch: int, max_gap: int, generator: torch.Generator):
    """Episode e, times t < t+k within the episode, k uniform in 1..min(max_gap, len-1)."""
    lengths = episodes.lengths.cpu()
    usable = torch.nonzero(lengths >= 2).flatten()
    e = usable[torch.randint(0, usable.numel(), (batch,), generator=generator)]
    gap_max = torch.clamp(lengths[e] - 1, max=max_gap)
    k = 1 + (torch.rand(batch, generator=generator) * gap_max).long().clamp(max=gap_max - 1)
    t = (torch.rand(batch, generator=generator) * (lengths[e] - k)).long()
    return e, t, k


def pretrain_metric_encoder(
    encoder: nn.Module,
    episodes: EpisodeTensors,
    img_size: int,
    config: MetricPretrainConfig,
    log: Callable[[dict[str, float]], None] | None = None,
    progress: bool = True,
    start_step: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    checkpoint: Callable[[int, torch.optim.Optimizer], None] | None = None,
    checkpoint_every: int = 0,
    readout: StateReadout | None = None,
) -> torch.optim.Optimizer:
    """Train `encoder` in place. With `config.state_readout_weight` > 0, `readout` (built by the caller,
    so that a checkpoint can hold it) is trained with it; `optimizer`, if given, must cover both."""
    if config.state_readout_weight > 0 and readout is None:
        raise ConfigError("encoder_pretrain.state_readout_weight > 0 needs a StateReadout")
    device = episodes.device
    encoder.to(device).train()
    generator = torch.Generator().manual_seed(config.seed + start_step)
    weights = torch.as_tensor(list(config.state_weights), dtype=torch.float32, device=device)
    if weights.numel() > episodes.states.shape[-1]:
        raise ConfigError(
            f"state_weights has {weights.numel()} entries but states have {episodes.states.shape[-1]} dims"
        )
    weights = torch.nn.functional.pad(weights, (0, episodes.states.shape[-1] - weights.numel()))
    readout = readout.to(device).train() if config.state_readout_weight > 0 else None
    optimizer = optimizer or pretrain_optimizer(encoder, readout, config)
    warmup = int(config.warmup_fraction * config.steps)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp_bf16 and device.type == "cuda")
    bar = tqdm(range(start_step, config.steps), desc="encoder", disable=not progress, dynamic_ncols=True,
               initial=start_step, total=config.steps)
    for step in bar:
        lr = cosine_lr(step, config.steps, warmup, config.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        e, t, k = sample_pairs(episodes, config.batch_size, config.max_gap, generator)
        e, t, k = e.to(device), t.to(device), k.to(device)
        frames = torch.cat([episodes.frames(e, t), episodes.frames(e, t + k)])
        with autocast:
            z = encoder(to_model_input(frames, img_size)).float()
        z1, z2 = z.chunk(2)
        d = latent_distance(z1, z2)
        if config.target == "state":
            delta = state_displacement(episodes.states[e, t], episodes.states[e, t + k], weights, config.angle_dims)
        else:
            delta = k.float()
        delta = delta / config.target_scale
        pull = (d - delta).pow(2).mean()
        # Negatives: the second frame of another pair (almost always another episode).
        d_neg = latent_distance(z1, z2.roll(1, dims=0))
        other = (e != e.roll(1)).float()
        push = (torch.relu(config.push_margin - d_neg) * other).sum() / other.sum().clamp(min=1)
        frac = step / max(1, config.steps - 1)
        push_weight = config.push_weight[0] + (config.push_weight[1] - config.push_weight[0]) * frac
        loss = pull + push_weight * push
        readout_loss = None
        if readout is not None:
            pair_states = torch.cat([episodes.states[e, t], episodes.states[e, t + k]])
            readout_loss = readout.loss(z, pair_states)
            loss = loss + config.state_readout_weight * readout_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(_trained_parameters(encoder, readout), config.grad_clip)
        optimizer.step()
        if log is not None and (step % 50 == 0 or step == config.steps - 1):
            # read back only when logged: a .item() every step would wait for the device every step
            extra = {"readout": readout_loss.item()} if readout_loss is not None else {}
            log({"step": step, "loss": loss.item(), "pull": pull.item(), "push": push.item(), "lr": lr,
                 "mean_d": d.mean().item(), "mean_delta": delta.mean().item(), **extra})
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < config.steps:
            checkpoint(step + 1, optimizer)
    encoder.eval()
    return optimizer


def _trained_parameters(encoder: nn.Module, readout: StateReadout | None) -> list[nn.Parameter]:
    return list(encoder.parameters()) + (list(readout.parameters()) if readout is not None else [])


def pretrain_optimizer(encoder: nn.Module, readout: StateReadout | None, config: MetricPretrainConfig) -> torch.optim.Optimizer:
    """AdamW over the encoder and, if given, the readout (the optimizer a checkpoint restores)."""
    return torch.optim.AdamW(_trained_parameters(encoder, readout), lr=config.lr, betas=tuple(config.betas),
                             weight_decay=config.weight_decay)


@torch.no_grad()
def unit_variance_scale(encoder: nn.Module, episodes: EpisodeTensors, img_size: int, frames: int = 4096, seed: int = 0) -> float:
    """The global factor that gives the encoder's latents unit per-element variance."""
    generator = torch.Generator().manual_seed(seed)
    lengths = episodes.lengths.cpu()
    e = torch.randint(0, len(lengths), (frames,), generator=generator)
    t = (torch.rand(frames, generator=generator) * lengths[e]).long()
    zs = []
    for chunk in range(0, frames, 512):
        sl = slice(chunk, chunk + 512)
        batch = episodes.frames(e[sl], t[sl])
        zs.append(encoder(to_model_input(batch, img_size)).float())
    z = torch.cat(zs)
    variance = z.var(dim=0).mean().item()
    return 1.0 / math.sqrt(max(variance, 1e-12))
