"""World-model training with a frozen encoder (spec 3.9): latent MSE with teacher forcing on visual
and proprio features, plus decoder reconstruction on detached latents.

Optionally (`rollout_steps` K > 0, not in DINO-WM) a rollout loss is added: from num_hist encoded
frames the predictor rolls K steps forward on its own predictions, as the planner uses it, and
each predicted frame is compared with the encoded truth, gradients flowing through the whole
chain. Teacher forcing alone never shows the predictor its own errors, so a model can score well one
step ahead and still drift over the planning horizon.

A frozen encoder's latents of every frame are computed once and kept on the device
(`cache_latents`); each step then costs only the predictor, the embeddings and the decoder.

With `model.train_encoder` (DINO-WM's key; its own PushT and Wall configs keep it false) the encoder
is trained with the world model at `encoder_lr`, as upstream does: Adam, the prediction targets
detached, the latents computed every step. DINO-WM's DINOv2 hardly moves at its 1e-6; wmquant's small
encoders were shaped for planning by the temporal-metric pretraining (wmquant.training.encoder), and
a prediction loss alone would reshape the goal-cost landscape that the planner descends. So an
anchor (`encoder_anchor_weight`, not in DINO-WM) holds the distances between frames to those of the
pretrained encoder, and the tokens' common position to theirs, while the tokens may still move
relative to one another, towards what the predictor can predict. The pretrained encoder's latents,
the anchor's reference, are the ones cached then.

With `encoder_regularizer="sigreg"` (not in DINO-WM) the encoder is instead trained end to end, as
JEPA-style world models such as LeWM are (shared/notes/anchors-pusht.md): the visual prediction
targets keep their graph, and nothing holds the encoder to the pretrained one it starts from
(`encoder_pretrain.steps=0` starts it untrained, but an untrained encoder's latents hardly vary
between frames, and SIGReg cannot lift such a near-collapse: docs/differences.md). What keeps the
latents from collapsing onto a constant, which would make every prediction exact, is SIGReg
(wmquant.training.sigreg): each frame's latent, flattened and divided by the scale folded into the
encoder (`encoder_output_scale`), is held to an isotropic standard Gaussian, at weight
`sigreg_weight`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..data.transforms import to_model_input
from ..errors import ConfigError
from .batches import EpisodeTensors, WindowSampler
from .encoder import latent_distance
from .sigreg import sigreg_loss
from .state import cosine_lr


ENCODER_REGULARIZERS = ("anchor", "sigreg")


@dataclass
class WorldModelTrainConfig:
    steps: int = 3000
    batch_size: int = 256
    predictor_lr: float = 1e-3
    action_encoder_lr: float = 1e-3
    decoder_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    amp_bf16: bool = True
    cache_latents: bool = True
    log_every: int = 50
    val_batches: int = 4
    rollout_steps: int = 0  # K > 0 adds the K-step rollout loss (0: teacher forcing only, as DINO-WM)
    rollout_loss_weight: float = 1.0
    encoder_lr: float = 1e-6  # used with model.train_encoder only (DINO-WM's default)
    encoder_anchor_weight: float = 1.0  # with model.train_encoder: weight of the geometry anchor
    encoder_regularizer: str = "anchor"  # with model.train_encoder: "anchor" (held to the pretrained encoder) or "sigreg" (end to end)
    sigreg_weight: float = 0.1  # with encoder_regularizer="sigreg": weight of SIGReg

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"training.steps and training.batch_size must be positive, got {self.steps}, {self.batch_size}")
        if isinstance(self.rollout_steps, bool) or not isinstance(self.rollout_steps, int) or self.rollout_steps < 0:
            raise ConfigError(f"training.rollout_steps must be an integer >= 0, got {self.rollout_steps!r}")
        if self.rollout_loss_weight < 0:
            raise ConfigError(f"training.rollout_loss_weight must be >= 0, got {self.rollout_loss_weight}")
        if self.encoder_regularizer not in ENCODER_REGULARIZERS:
            raise ConfigError(f"training.encoder_regularizer={self.encoder_regularizer!r} is unknown; "
                              f"valid: {', '.join(ENCODER_REGULARIZERS)}")
        for key in ("encoder_lr", "encoder_anchor_weight", "sigreg_weight"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigError(f"training.{key} must be a number >= 0, got {value!r}")


@torch.no_grad()
def encode_all_frames(model, episodes: EpisodeTensors, img_size: int, batch: int = 1024,
                      encoder: torch.nn.Module | None = None) -> torch.Tensor:
    """A frozen encoder's latents of every frame (default: the model's): (E, T, N, D) float32 on the
    episodes' device."""
    encoder = model.encoder if encoder is None else encoder
    e, t = episodes.visual.shape[:2]
    flat = episodes.visual.flatten(0, 1)
    out = []
    for i in range(0, flat.shape[0], batch):
        frames = to_model_input(flat[i : i + batch].to(episodes.device), img_size)
        out.append(encoder(model.resize_for_encoder(frames)).float())
    z = torch.cat(out)
    return z.view(e, t, *z.shape[1:])


def make_optimizers(model, cfg: WorldModelTrainConfig) -> list[torch.optim.Optimizer]:
    """Upstream's split: AdamW for the predictor and for the action+proprio encoders, Adam for the
    decoder and, with `model.train_encoder`, Adam for the encoder (last, so that checkpoints of a
    frozen-encoder run keep their order)."""
    optimizers = [
        torch.optim.AdamW(model.predictor.parameters(), lr=cfg.predictor_lr, weight_decay=cfg.weight_decay),
        torch.optim.AdamW(
            [*model.action_encoder.parameters(), *model.proprio_encoder.parameters()],
            lr=cfg.action_encoder_lr, weight_decay=cfg.weight_decay,
        ),
    ]
    if model.decoder is not None:
        optimizers.append(torch.optim.Adam(model.decoder.parameters(), lr=cfg.decoder_lr))
    if model.train_encoder:
        optimizers.append(torch.optim.Adam(model.encoder.parameters(), lr=cfg.encoder_lr))
    for opt in optimizers:
        for group in opt.param_groups:
            group.setdefault("base_lr", group["lr"])
    return optimizers


class LatentWindows:
    """Training windows whose visual part comes from cached encoder latents."""

    def __init__(self, sampler: WindowSampler, latents: torch.Tensor | None, img_size: int, frames: bool = True) -> None:
        self.sampler = sampler
        self.latents = latents
        self.img_size = img_size
        self.frames = frames  # False: latents only (the rollout loss needs no images)

    def batch(self, size: int) -> dict[str, torch.Tensor]:
        episode, start = self.sampler.sample_indices(size)
        data = self.sampler.gather(episode, start, self.img_size, visual=self.frames)
        if self.latents is not None:
            f = self.sampler.frameskip
            frame_t = start[:, None] + f * torch.arange(self.sampler.num_frames, device=start.device)[None]
            data["visual_latent"] = self.latents[episode[:, None], frame_t]
        return data


def encode_window_frames(encoder: torch.nn.Module, model, visual: torch.Tensor) -> torch.Tensor:
    """Window frames (b, T, 3, H, W), model input -> latents (b, T, N, E), with autograd as the
    caller's context has it."""
    b, t = visual.shape[:2]
    tokens = encoder(model.resize_for_encoder(visual.flatten(0, 1)))
    return tokens.view(b, t, *tokens.shape[1:])


def encoder_anchor_loss(latents: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """How far a trained encoder's geometry has moved from the pretrained encoder's, on one batch
    of windows: latents (b, T, N, E) and the pretrained encoder's latents of the same frames.

    Two terms, in the units of a squared planning distance (`latent_distance`, the planning cost's
    square root). The distances between every two frames of a window, and between the first frames
    of neighbouring windows (mostly of other episodes), are compared with the pretrained encoder's
    (squared error). The distances alone cannot see all tokens sliding together: on PushT, 300 steps
    at learning rate 1e-4 moved the tokens by 14x their variance over frames (mean square), 88 % of
    it a shift common to all frames, and the predictor's loss rose 18x chasing it. So the batch's
    mean shift from the pretrained tokens counts too. Both are divided by the pretrained distances'
    mean square, so the weight means the same at any latent scale."""
    t = latents.shape[1]
    first, second = torch.triu_indices(t, t, offset=1, device=latents.device)

    def distances(z: torch.Tensor) -> torch.Tensor:
        within = latent_distance(z[:, first].flatten(0, 1), z[:, second].flatten(0, 1))
        across = latent_distance(z[:, 0], z[:, 0].roll(1, dims=0))
        return torch.cat([within, across])

    latents, reference = latents.float(), reference.float().detach()
    target = distances(reference)
    scale = target.pow(2).mean().clamp_min(1e-12)
    mean_shift = (latents - reference).mean(dim=(0, 1))  # (N, E): what every frame's tokens moved by in common
    return ((distances(latents) - target).pow(2).mean() + mean_shift.pow(2).sum(-1).mean()) / scale


def frame_sigreg_loss(latents: torch.Tensor, latent_scale: float = 1.0) -> torch.Tensor:
    """SIGReg of a batch of window latents (b, T, N, E): every frame's tokens flattened into one
    embedding, divided by the scale folded into the encoder. Whole frames, not single tokens, are
    the samples: tokens that depend on their position alone could look Gaussian across positions
    while saying nothing about the frame."""
    return sigreg_loss(latents.flatten(0, 1).flatten(1) / latent_scale)


def losses_for_batch(model, data: dict[str, torch.Tensor], visual_target_gradient: bool = False) -> dict[str, torch.Tensor]:
    obs = {key: data[key] for key in ("visual", "visual_latent", "proprio") if key in data}
    return model(obs, data["actions"], visual_target_gradient=visual_target_gradient)


def rollout_losses(model, data: dict[str, torch.Tensor], steps: int, visual_target_gradient: bool = False) -> dict[str, torch.Tensor]:
    """The K-step rollout loss on windows of num_hist + K frames (`data` as `LatentWindows.batch`
    gives, with "visual_latent"): MSE between the predictor's own rollout and the encoded frames,
    over visual and proprio features of all K predicted frames (the visual ones keeping their graph
    with `visual_target_gradient`, as in `WorldModel.forward`)."""
    n = model.num_hist
    if data["visual_latent"].shape[1] != n + steps:
        raise ConfigError(f"rollout windows need num_hist + rollout_steps = {n + steps} frames, got {data['visual_latent'].shape[1]}")
    proprio = model.proprio_encoder(data["proprio"])
    target = model.assemble(data["visual_latent"], proprio, model.encode_act(data["actions"]))
    # n + K - 1 actions: the first n ride on the given frames, each later one on a predicted frame
    z = model.rollout_z({"visual": data["visual_latent"][:, :n], "proprio": proprio[:, :n]}, data["actions"][:, : n + steps - 1])
    obs_end = model.visual_dim + model.proprio_dim
    predicted = z[:, n:, :, :obs_end]
    target = model.prediction_target(target[:, n:, :, :obs_end], visual_target_gradient)
    return {"rollout_loss": torch.nn.functional.mse_loss(predicted, target)}


def train_world_model(
    model,
    train: EpisodeTensors,
    val: EpisodeTensors | None,
    img_size: int,
    cfg: WorldModelTrainConfig,
    log: Callable[[dict], None] | None = None,
    progress: bool = True,
    start_step: int = 0,
    optimizers: list[torch.optim.Optimizer] | None = None,
    checkpoint: Callable[[int, list], None] | None = None,
    checkpoint_every: int = 0,
    reference_encoder: torch.nn.Module | None = None,
    latent_scale: float = 1.0,
) -> list[torch.optim.Optimizer]:
    """`reference_encoder`: with `model.train_encoder` and the anchor, the pretrained encoder that
    the anchor holds the trained one to (default: a copy of `model.encoder` as it is at step 0; a run
    resumed later must pass it, since its model's encoder has moved). `latent_scale`: the factor
    folded into the encoder's output (`encoder_output_scale`), which SIGReg divides out."""
    device = train.device
    model.to(device)
    num_frames = model.num_hist + model.num_pred
    joint = bool(model.train_encoder)  # the encoder trains with the world model
    end_to_end = joint and cfg.encoder_regularizer == "sigreg"
    anchored = joint and not end_to_end
    if anchored:
        if reference_encoder is None:
            if start_step:
                raise ConfigError("resuming a run that trains the encoder needs the pretrained encoder as reference_encoder")
            reference_encoder = copy.deepcopy(model.encoder)
        reference_encoder = reference_encoder.to(device).eval().requires_grad_(False)
    # Cached latents are a frozen encoder's: the model's, or, when the encoder trains, the pretrained
    # one's, as the anchor's reference (the trained encoder then reads the frames every step); an
    # encoder trained end to end has no use for them.
    frames = model.decoder is not None or not cfg.cache_latents or joint
    train_windows = LatentWindows(
        WindowSampler(train, num_frames, model.frameskip, seed=cfg.seed + start_step),
        encode_all_frames(model, train, img_size, encoder=reference_encoder) if cfg.cache_latents and not end_to_end else None,
        img_size, frames=frames,
    )
    val_windows = None
    if val is not None and len(val.lengths):
        val_windows = LatentWindows(
            WindowSampler(val, num_frames, model.frameskip, seed=cfg.seed + 1),
            encode_all_frames(model, val, img_size) if cfg.cache_latents and not joint else None, img_size, frames=frames,
        )
    rollout_windows = None
    if cfg.rollout_steps:
        if train_windows.latents is None and not joint:
            raise ConfigError("training.rollout_steps needs training.cache_latents=true (the rollout loss reads cached latents)")
        rollout_windows = LatentWindows(
            WindowSampler(train, model.num_hist + cfg.rollout_steps, model.frameskip, seed=cfg.seed + 7 + start_step),
            train_windows.latents, img_size, frames=joint,
        )
    optimizers = optimizers or make_optimizers(model, cfg)
    warmup = int(cfg.warmup_fraction * cfg.steps)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp_bf16 and device.type == "cuda")
    trainable = [p for p in model.parameters()
                 if p.requires_grad and (joint or not any(p is q for q in model.encoder.parameters()))]
    bar = tqdm(range(start_step, cfg.steps), desc="world model", disable=not progress, dynamic_ncols=True,
               initial=start_step, total=cfg.steps)
    model.train()
    for step in bar:
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, cfg.steps, warmup, group["base_lr"])
        data = train_windows.batch(cfg.batch_size)
        with autocast:
            if joint:
                reference = data.pop("visual_latent", None)  # the pretrained encoder's, if cached
                data["visual_latent"] = encode_window_frames(model.encoder, model, data["visual"])
                if anchored and reference is None:
                    with torch.no_grad():
                        reference = encode_window_frames(reference_encoder, model, data["visual"])
            losses = losses_for_batch(model, data, visual_target_gradient=end_to_end)
            if anchored:
                losses["encoder_anchor_loss"] = encoder_anchor_loss(data["visual_latent"], reference)
                losses["loss"] = losses["loss"] + cfg.encoder_anchor_weight * losses["encoder_anchor_loss"]
            if end_to_end:
                losses["sigreg_loss"] = frame_sigreg_loss(data["visual_latent"], latent_scale)
                losses["loss"] = losses["loss"] + cfg.sigreg_weight * losses["sigreg_loss"]
            if rollout_windows is not None:
                rollout_data = rollout_windows.batch(cfg.batch_size)
                if joint:
                    rollout_data["visual_latent"] = encode_window_frames(model.encoder, model, rollout_data.pop("visual"))
                losses.update(rollout_losses(model, rollout_data, cfg.rollout_steps, visual_target_gradient=end_to_end))
                losses["loss"] = losses["loss"] + cfg.rollout_loss_weight * losses["rollout_loss"]
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        for opt in optimizers:
            opt.step()
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            entry = {"step": step, **{f"train/{k}": v.item() for k, v in losses.items()}}
            if val_windows is not None:
                entry.update(evaluate(model, val_windows, cfg))
                model.train()
            bar.set_postfix(z=f"{entry['train/z_loss']:.4f}")
            if log is not None:
                log(entry)
        if checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < cfg.steps:
            checkpoint(step + 1, optimizers)
    model.eval()
    return optimizers


@torch.no_grad()
def evaluate(model, windows: LatentWindows, cfg: WorldModelTrainConfig) -> dict[str, float]:
    model.eval()
    state = windows.sampler.generator.get_state()
    windows.sampler.generator.manual_seed(cfg.seed + 12345)  # the same validation windows every time
    totals: dict[str, float] = {}
    for _ in range(cfg.val_batches):
        losses = losses_for_batch(model, windows.batch(cfg.batch_size))
        for k, v in losses.items():
            totals[f"val/{k}"] = totals.get(f"val/{k}", 0.0) + v.item() / cfg.val_batches
    windows.sampler.generator.set_state(state)
    return totals
