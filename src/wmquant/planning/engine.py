"""The planning engine: how a planner runs the world model (device, precision, batching).

Planners ask three things of a world model: encode observations, roll out action sequences from
encoded observations, and score the rollouts against goals. The engine does these in batches of
whole episodes (`chunk_episodes` episodes x all their samples per predictor call), encodes each
observation once per planning step, and runs in fp32 unless a faster precision is asked for.
It does not know whether the model is quantized.

Speed without changing results: fp32 is exact (TF32 off) and the default; `tf32` and `bf16` are
opt-in. `chunk_episodes="auto"` sizes predictor batches to half the free device memory (at most
MAX_SEQUENCES_PER_CALL sequences). `compile` runs the predictor step through `torch.compile`
(planning only; see `Engine.compile`). Nothing in a rollout or a cost evaluation waits for the
device, so a planner's loop queues work without host syncs.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from ..data.base import Normalization
from ..data.transforms import to_model_input
from ..errors import ConfigError
from .objective import Objective

PRECISIONS = ("fp32", "tf32", "bf16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: Sequences per predictor call on CUDA: attention kernels put the batch on a grid axis of at most
#: 65535 blocks.
MAX_SEQUENCES_PER_CALL = 65535
#: Sequences per predictor call on the CPU: larger batches only add memory traffic.
CPU_SEQUENCES_PER_CALL = 1200
#: Share of the free device memory that the predictor's activations may take.
MEMORY_SHARE = 0.5


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"engine.device={name} but CUDA is not available; use engine.device=cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N") from err


def rollout_bytes_per_sequence(model: nn.Module, horizon: int, elem_bytes: int = 4) -> int | None:
    """Upper estimate of the device memory one rollout sequence needs at its largest predictor call.

    Per token of the largest window (num_hist frames): the residual stream, norms and projections
    (3 x dim), qkv, its per-head copies and the attention output (8 x inner), the MLP hidden and its
    activation (2 x mlp); the explicit attention path adds scores and probabilities per head. Plus
    the rollout's own frames (3 copies of (horizon+1) x patches x dim). None for models without a
    ViT predictor (toy models).
    """
    predictor = getattr(model, "predictor", None)
    blocks = getattr(predictor, "blocks", None)
    if predictor is None or not blocks:
        return None
    attn, mlp = blocks[0].attn, blocks[0].mlp
    dim, inner, hidden = predictor.dim, attn.num_heads * attn.dim_head, mlp.fc1.out_features
    tokens = min(predictor.num_frames, horizon) * predictor.num_patches
    per_token = 3 * dim + 8 * inner + 2 * hidden
    if not isinstance(attn.probs_tap, nn.Identity):
        per_token += 2 * attn.num_heads * tokens
    frames = 3 * (horizon + 1) * predictor.num_patches * dim
    return elem_bytes * (tokens * per_token + frames)


def _has_hooks(module: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def _structure(module: nn.Module) -> tuple:
    """Identity of every submodule: a swapped layer (quantization, real kernels) changes it."""
    return tuple((name, id(m)) for name, m in module.named_modules())


@dataclass
class Engine:
    """compile: False, True (torch.compile's default mode) or a mode of COMPILE_MODES. The
    compiled predictor step is used for no-grad rollouts of a model in eval mode without hooks;
    everything else (gradient planners, calibration observers and recorders) runs eagerly. If
    compilation fails, the engine warns, records why in `compile_status` and runs eagerly."""

    model: torch.nn.Module
    normalization: Normalization
    img_size: int
    objective: Objective
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"
    chunk_episodes: int | str = "auto"
    compile: bool | str = False
    compile_status: str = field(default="off", init=False)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown engine.precision {self.precision!r}; valid: {', '.join(PRECISIONS)}")
        if self.chunk_episodes != "auto" and (not isinstance(self.chunk_episodes, int) or self.chunk_episodes < 1):
            raise ConfigError(f"engine.chunk_episodes must be 'auto' or a positive integer, got {self.chunk_episodes!r}")
        if not (isinstance(self.compile, bool) or self.compile in COMPILE_MODES):
            raise ConfigError(f"engine.compile must be true, false or one of {', '.join(COMPILE_MODES)}; got {self.compile!r}")
        self.model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._sequence_limit: dict[int, int] = {}
        self._compiled: tuple[tuple, Any] | None = None
        if self.compile:
            self.compile_status = "pending"

    # -- precision --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def numerics(self) -> Iterator[None]:
        """fp32 is exact (TF32 off); tf32 lets matmuls use TF32; bf16 autocasts the model."""
        old_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.precision == "tf32"
        torch.backends.cudnn.allow_tf32 = self.precision == "tf32"
        try:
            if self.precision == "bf16":
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=True):
                    yield
            else:
                yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old_tf32

    # -- observations -----------------------------------------------------------------------------
    def preprocess(self, obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """obs: visual uint8 (b, H, W, 3) or (b, t, H, W, 3); proprio (b, P) or (b, t, P).
        Returns model input with a time axis: visual (b, t, 3, S, S) in [-1, 1], proprio normalised."""
        visual = torch.as_tensor(np.asarray(obs["visual"]))
        proprio = torch.as_tensor(np.asarray(obs["proprio"]), dtype=torch.float32)
        if visual.ndim == 4:
            visual = visual[:, None]
        if proprio.ndim == 2:
            proprio = proprio[:, None]
        visual = visual.to(self.device).permute(0, 1, 4, 2, 3)  # (b, t, 3, H, W)
        return {
            "visual": to_model_input(visual, self.img_size),
            "proprio": self.normalization.normalize_proprio(proprio.to(self.device)),
        }

    @torch.no_grad()
    def encode(self, obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Latents of observations: visual (b, t, N, E), proprio (b, t, Dp), in fp32."""
        with self.numerics():
            z = self.model.encode_obs(self.preprocess(obs))
        return {k: v.float() for k, v in z.items()}

    # -- compiled predictor step ------------------------------------------------------------------
    def _compiled_predict(self):
        """The compiled `model.predict` for the model's current layers (recompiled after a swap)."""
        key = _structure(self.model.predictor)
        if self._compiled is None or self._compiled[0] != key:
            mode = None if self.compile is True else self.compile
            self._compiled = (key, torch.compile(self.model.predict, mode=mode))
        return self._compiled[1]

    def _compile_applies(self, grad: bool) -> bool:
        return (bool(self.compile) and not self.compile_status.startswith("failed") and not grad and not self.model.training
                and hasattr(self.model, "predict") and hasattr(self.model, "predictor")
                and not _has_hooks(self.model))

    def _rollout_latent(self, z0: dict[str, torch.Tensor], actions: torch.Tensor, grad: bool) -> dict[str, torch.Tensor]:
        if not self._compile_applies(grad):
            return self.model.rollout_latent(z0, actions)
        self.model.predict = self._compiled_predict()  # an instance attribute shadows the method
        try:
            out = self.model.rollout_latent(z0, actions)
            self.compile_status = "on"
            return out
        except torch.OutOfMemoryError:
            raise
        except Exception as err:  # a compiler failure must not end a planning run: fall back to eager
            first_line = (str(err).strip().splitlines() or [""])[0][:200]
            self.compile_status = f"failed: {type(err).__name__}: {first_line}"
            warnings.warn(f"engine.compile: torch.compile failed, running eagerly ({self.compile_status})", stacklevel=2)
        finally:
            del self.model.predict
        return self.model.rollout_latent(z0, actions)

    # -- rollouts ---------------------------------------------------------------------------------
    def max_sequences_per_call(self, horizon: int) -> int:
        """Sequences per predictor call: CPU_SEQUENCES_PER_CALL on the CPU; on CUDA what fits in
        MEMORY_SHARE of the free memory (MAX_SEQUENCES_PER_CALL at most). Computed once per horizon."""
        if horizon not in self._sequence_limit:
            limit = CPU_SEQUENCES_PER_CALL
            if self.device.type == "cuda":
                limit = MAX_SEQUENCES_PER_CALL
                per_sequence = rollout_bytes_per_sequence(self.model, horizon)
                if per_sequence:
                    free, _ = torch.cuda.mem_get_info(self.device)
                    reusable = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
                    limit = min(limit, int(MEMORY_SHARE * (free + reusable) // per_sequence))
            self._sequence_limit[horizon] = max(1, limit)
        return self._sequence_limit[horizon]

    def episodes_per_call(self, num_episodes: int, samples: int, horizon: int = 5) -> int:
        """Episodes whose samples go through the predictor together (`chunk_episodes`)."""
        if self.chunk_episodes != "auto":
            return int(self.chunk_episodes)
        return max(1, min(num_episodes, self.max_sequences_per_call(horizon) // max(samples, 1)))

    def rollout(self, z0: dict[str, torch.Tensor], actions: torch.Tensor, grad: bool = False) -> dict[str, torch.Tensor]:
        """z0: latents (b, n, ...) ; actions (b, H, A) normalised -> predicted latents (b, H+1, ...)."""
        ctx = contextlib.nullcontext() if grad else torch.no_grad()
        with ctx, self.numerics():
            z = self._rollout_latent(z0, actions.to(self.device), grad)
        return {k: v.float() for k, v in z.items()}

    @torch.no_grad()
    def sample_costs(
        self, z0: dict[str, torch.Tensor], z_goal: dict[str, torch.Tensor], actions: torch.Tensor
    ) -> torch.Tensor:
        """Cost of every sample. z0/z_goal: (E, n, ...) and (E, 1, ...); actions (E, S, H, A) -> (E, S)."""
        episodes, samples, horizon = actions.shape[:3]
        chunk = self.episodes_per_call(episodes, samples, horizon)
        costs = []
        for start in range(0, episodes, chunk):
            sl = slice(start, start + chunk)
            c = actions[sl].shape[0]
            z0_c = {k: per_sample(v[sl], samples) for k, v in z0.items()}
            goal_c = {k: per_sample(v[sl], samples) for k, v in z_goal.items()}
            z = self.rollout(z0_c, actions[sl].reshape(c * samples, *actions.shape[2:]))
            costs.append(self.objective(z, goal_c).view(c, samples))
        return torch.cat(costs)


def per_sample(x: torch.Tensor, samples: int) -> torch.Tensor:
    """(c, ...) -> (c * samples, ...), each row repeated `samples` times in a row (repeat_interleave).
    For one episode this is a stride-0 view, not a copy."""
    return x.unsqueeze(1).expand(x.shape[0], samples, *x.shape[1:]).reshape(x.shape[0] * samples, *x.shape[1:])
