"""DINO-WM's world model (spec 3): encode observations, predict the next latent frame, roll out.

A latent frame z (N, D) is the encoder's N patch tokens with the proprio and action embeddings
tiled onto every patch, concatenated along features: D = visual | proprio x repeat | action x
repeat (concat_dim = 1). The predictor maps a window of up to `num_hist` latent frames to the
next frame at each position; `rollout` chains it over an action sequence (spec 3.10).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from ..errors import ConfigError
from .decoder import PatchDecoder
from .embeddings import ProprioEmbedding
from .predictor import ViTPredictor
from .vit import VisionTransformer


class WorldModel(nn.Module):
    """Children: `encoder`, `proprio_encoder`, `action_encoder`, `predictor`, `decoder` (or None).

    Observations are dicts: "visual" (b, t, 3, H, W) in [-1, 1] and "proprio" (b, t, P),
    normalised. Actions are (b, t, A * frameskip): per model step, `frameskip` normalised env
    actions concatenated in time order; the action of frame k is the one taken after frame k.
    Images are resized to `encoder_img_size` before the encoder (default: the size whose patch
    grid matches the predictor's patches per frame; DINO-WM: 224 -> 196).
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        proprio_encoder: ProprioEmbedding,
        action_encoder: ProprioEmbedding,
        predictor: ViTPredictor,
        decoder: PatchDecoder | None = None,
        *,
        num_hist: int = 3,
        num_pred: int = 1,
        frameskip: int = 5,
        encoder_img_size: int | None = None,
        concat_dim: int = 1,
        num_proprio_repeat: int = 1,
        num_action_repeat: int = 1,
        train_encoder: bool = False,
    ) -> None:
        super().__init__()
        if concat_dim != 1:
            raise ConfigError(
                f"concat_dim={concat_dim} is not supported; only 1 (proprio and action features appended to every patch, "
                "as in DINO-WM's released models) is implemented"
            )
        if num_pred != 1:
            raise ConfigError(f"num_pred={num_pred} is not supported; DINO-WM predicts one frame ahead (num_pred=1)")
        if encoder_img_size is None:
            encoder_img_size = math.isqrt(predictor.num_patches) * encoder.patch_size
        for label, value in (("num_hist", num_hist), ("frameskip", frameskip), ("num_proprio_repeat", num_proprio_repeat),
                             ("num_action_repeat", num_action_repeat), ("encoder_img_size", encoder_img_size)):
            if int(value) < 1:
                raise ConfigError(f"{label}={value} must be a positive integer")
        self.encoder = encoder
        self.proprio_encoder = proprio_encoder
        self.action_encoder = action_encoder
        self.predictor = predictor
        self.decoder = decoder
        self.num_hist = num_hist
        self.num_pred = num_pred
        self.frameskip = frameskip
        self.concat_dim = concat_dim
        self.num_proprio_repeat = num_proprio_repeat
        self.num_action_repeat = num_action_repeat
        self.encoder_img_size = encoder_img_size
        self.train_encoder = train_encoder
        self.visual_dim = encoder.emb_dim
        self.proprio_dim = proprio_encoder.emb_dim * num_proprio_repeat
        self.action_dim = action_encoder.emb_dim * num_action_repeat
        token_dim = self.visual_dim + self.proprio_dim + self.action_dim
        if predictor.dim != token_dim:
            raise ConfigError(
                f"predictor dim {predictor.dim} does not match the token width {token_dim} = visual {self.visual_dim} "
                f"+ proprio {self.proprio_dim} + action {self.action_dim}"
            )
        num_patches = encoder.num_patches(encoder_img_size)
        if predictor.num_patches != num_patches:
            raise ConfigError(
                f"predictor expects {predictor.num_patches} patches per frame but the encoder gives {num_patches} "
                f"at encoder_img_size={encoder_img_size}"
            )
        if predictor.num_frames < num_hist:
            raise ConfigError(f"predictor holds {predictor.num_frames} frames, fewer than num_hist={num_hist}")
        if decoder is not None and decoder.emb_dim != self.visual_dim:
            raise ConfigError(f"decoder emb_dim {decoder.emb_dim} does not match the encoder's {self.visual_dim}")

    def train(self, mode: bool = True) -> "WorldModel":
        super().train(mode)
        if not self.train_encoder:
            # A frozen encoder stays in eval mode (DINO-WM's VWorldModel.train does the same).
            self.encoder.eval()
        return self

    # --- encoding -------------------------------------------------------------------------------

    def encode_obs(self, obs: dict[str, torch.Tensor], track_grad: bool | None = None) -> dict[str, torch.Tensor]:
        """obs {"visual": (b, t, 3, H, W), "proprio": (b, t, P)} -> {"visual": (b, t, N, E),
        "proprio": (b, t, Dp)} (proprio is the embedding, not repeated).

        The encoder runs without autograd unless `track_grad` (default: `train_encoder`): a
        quantization method that learns the encoder's quantization parameters needs its gradients
        while the encoder itself stays frozen."""
        visual = obs["visual"]
        b, t = visual.shape[:2]
        frames = rearrange(visual, "b t c h w -> (b t) c h w")
        track_grad = self.train_encoder if track_grad is None else track_grad
        with contextlib.nullcontext() if track_grad else torch.no_grad():
            tokens = self.encoder(self.resize_for_encoder(frames))
        return {
            "visual": rearrange(tokens, "(b t) n e -> b t n e", b=b, t=t),
            "proprio": self.proprio_encoder(obs["proprio"]),
        }

    def resize_for_encoder(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, 3, H, W) -> the encoder's input size, as torchvision's Resize(encoder_img_size)
        on tensors: bilinear with antialias, the shorter side to encoder_img_size, the longer
        scaled with it; a no-op at the right size."""
        height, width = frames.shape[-2:]
        short, long = min(height, width), max(height, width)
        if short == self.encoder_img_size:
            return frames
        new_long = int(self.encoder_img_size * long / short)
        size = (self.encoder_img_size, new_long) if height <= width else (new_long, self.encoder_img_size)
        return F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=True)

    def encode_act(self, act: torch.Tensor) -> torch.Tensor:
        """act (b, t, A * frameskip) -> (b, t, Da) (not repeated)."""
        return self.action_encoder(act)

    def assemble(self, visual: torch.Tensor, proprio_emb: torch.Tensor, action_emb: torch.Tensor) -> torch.Tensor:
        """(b, t, N, E), (b, t, Dp), (b, t, Da) -> z (b, t, N, E + Dp*rp + Da*ra): the proprio and
        action embeddings tiled onto every patch and repeated along features."""
        num_patches = visual.shape[2]
        proprio = repeat(proprio_emb, "b t d -> b t n (r d)", n=num_patches, r=self.num_proprio_repeat)
        action = repeat(action_emb, "b t d -> b t n (r d)", n=num_patches, r=self.num_action_repeat)
        return torch.cat([visual, proprio.to(visual.dtype), action.to(visual.dtype)], dim=-1)

    def encode(self, obs: dict[str, torch.Tensor], act: torch.Tensor) -> torch.Tensor:
        """Observations and their actions -> z (b, t, N, D)."""
        z_obs = self.encode_obs(obs)
        return self.assemble(z_obs["visual"], z_obs["proprio"], self.encode_act(act))

    def separate_emb(self, z: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """z (b, t, N, D) -> ({"visual": (b, t, N, E), "proprio": (b, t, Dp)}, action (b, t, Da)).

        Proprio and action are read from patch 0, first repeat (they are the same on every patch
        of an encoded frame, but not necessarily of a predicted one).
        """
        visual_end = self.visual_dim
        proprio_end = visual_end + self.proprio_encoder.emb_dim
        action_start = visual_end + self.proprio_dim
        z_obs = {"visual": z[..., :visual_end], "proprio": z[:, :, 0, visual_end:proprio_end]}
        return z_obs, z[:, :, 0, action_start : action_start + self.action_encoder.emb_dim]

    def replace_actions(self, z: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """z (b, t, N, D) with its action features replaced by the encoding of act (b, t, A*f)."""
        action = repeat(self.encode_act(act), "b t d -> b t n (r d)", n=z.shape[2], r=self.num_action_repeat)
        return torch.cat([z[..., : -self.action_dim], action.to(z.dtype)], dim=-1)

    # --- prediction -----------------------------------------------------------------------------

    def predict(self, z: torch.Tensor) -> torch.Tensor:
        """z (b, t, N, D) -> (b, t, N, D); output frame k predicts input frame k+1."""
        t = z.shape[1]
        out = self.predictor(rearrange(z, "b t n d -> b (t n) d"))
        return rearrange(out, "b (t n) d -> b t n d", t=t)

    def rollout_z(self, z_obs_0: dict[str, torch.Tensor], act: torch.Tensor) -> torch.Tensor:
        """Spec 3.10 from latents: z_obs_0 {"visual": (b, n, N, E), "proprio": (b, n, Dp)},
        act (b, H, A*f) with H >= n -> z (b, H+1, N, D).

        The first n actions are attached to the n given frames. Each remaining action is attached
        to the newest predicted frame, predicted from the last num_hist frames; a final prediction
        is appended as is. Works with expanded (stride-0) inputs: nothing is written in place.
        """
        n = z_obs_0["visual"].shape[1]
        horizon = act.shape[1]
        if horizon < n:
            raise ConfigError(f"rollout needs at least as many actions ({horizon}) as given frames ({n})")
        z = self.assemble(z_obs_0["visual"], z_obs_0["proprio"], self.encode_act(act[:, :n]))
        for step in range(n, horizon):
            z_next = self.predict(z[:, -self.num_hist :])[:, -1:]
            z = torch.cat([z, self.replace_actions(z_next, act[:, step : step + 1])], dim=1)
        z_last = self.predict(z[:, -self.num_hist :])[:, -1:]
        return torch.cat([z, z_last], dim=1)

    def rollout_latent(self, z_obs_0: dict[str, torch.Tensor], act: torch.Tensor) -> dict[str, torch.Tensor]:
        """Like `rollout_z`, returning {"visual": (b, H+1, N, E), "proprio": (b, H+1, Dp)}."""
        return self.separate_emb(self.rollout_z(z_obs_0, act))[0]

    def rollout(self, obs_0: dict[str, torch.Tensor], act: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """obs_0 with n frames, act (b, H, A*f) -> (z_obses {"visual", "proprio"} with H+1 frames,
        z (b, H+1, N, D)). Frame 0 is the encoded observation, frame k the prediction after k steps."""
        z = self.rollout_z(self.encode_obs(obs_0), act)
        return self.separate_emb(z)[0], z

    # --- training -------------------------------------------------------------------------------

    def forward(self, obs: dict[str, torch.Tensor], act: torch.Tensor,
                visual_target_gradient: bool = False) -> dict[str, torch.Tensor]:
        """Training losses (spec 3.9) for windows of num_hist + 1 frames.

        obs visual (b, num_hist+1, 3, H, W), proprio (b, num_hist+1, P); act (b, num_hist+1, A*f).
        Optionally obs["visual_latent"] (b, num_hist+1, N, E): the encoder's latents of those frames,
        computed beforehand and used instead of running the encoder (a trainer caches a frozen
        encoder's; one that trains the encoder passes them with their graph).
        `z_loss` is the MSE of predicted vs (detached) next-frame latents over visual and proprio
        features (action features excluded); `decoder_recon_loss` decodes the detached latents of
        all frames and compares them with the input images; `loss` is their sum.
        `visual_target_gradient`: the visual targets keep their graph, so an encoder trained end to
        end learns from both sides of the prediction (the proprio targets stay detached).
        """
        frames = (obs["visual_latent"] if "visual_latent" in obs else obs["visual"]).shape[1]
        if frames != self.num_hist + self.num_pred:
            raise ConfigError(f"training windows need num_hist + 1 = {self.num_hist + self.num_pred} frames, got {frames}")
        if "visual_latent" in obs:
            z = self.assemble(obs["visual_latent"], self.proprio_encoder(obs["proprio"]), self.encode_act(act))
        else:
            z = self.encode(obs, act)
        z_pred = self.predict(z[:, : self.num_hist])
        z_target = self.prediction_target(z[:, self.num_pred :], visual_target_gradient)
        visual_end, obs_end = self.visual_dim, self.visual_dim + self.proprio_dim
        losses = {
            "z_loss": F.mse_loss(z_pred[..., :obs_end], z_target[..., :obs_end]),
            "z_visual_loss": F.mse_loss(z_pred[..., :visual_end], z_target[..., :visual_end]),
            "z_proprio_loss": F.mse_loss(z_pred[..., visual_end:obs_end], z_target[..., visual_end:obs_end]),
        }
        if self.decoder is not None:
            decoded = self.decode_visual(z[..., :visual_end].detach())
            losses["decoder_recon_loss"] = F.mse_loss(decoded, obs["visual"])
        else:
            losses["decoder_recon_loss"] = torch.zeros((), device=z.device, dtype=z.dtype)
        losses["loss"] = losses["z_loss"] + losses["decoder_recon_loss"]
        return losses

    def prediction_target(self, z: torch.Tensor, visual_target_gradient: bool = False) -> torch.Tensor:
        """z (..., D) as a prediction target: detached (DINO-WM), or with `visual_target_gradient` its
        visual features keeping their graph (an encoder trained end to end) and the rest detached."""
        if not visual_target_gradient:
            return z.detach()
        return torch.cat([z[..., : self.visual_dim], z[..., self.visual_dim :].detach()], dim=-1)

    # --- decoding -------------------------------------------------------------------------------

    def decode_visual(self, z_visual: torch.Tensor) -> torch.Tensor:
        """z_visual (b, t, N, E) -> images (b, t, 3, H, W), roughly in [-1, 1]."""
        if self.decoder is None:
            raise ConfigError("this world model has no decoder; build it with a `decoder` section to decode images")
        return self.decoder(z_visual)

    def decode_obs(self, z_obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"visual": (b, t, N, E), "proprio": ...} -> {"visual": images, "proprio": unchanged}."""
        return {"visual": self.decode_visual(z_obs["visual"]), "proprio": z_obs["proprio"]}
