"""What calibration records: recorders fed by forward hooks, and the data handed to a method.

The recorders hook modules of the model, so whatever runs the model (the MPC-CEM planner on the
calibration episodes) feeds them without knowing:

* `BlockInputRecorder` keeps a seeded reservoir of whole sequences entering each part's
  `blocks.0` (with the extra block arguments, e.g. the predictor's frame-causal mask); block-wise
  methods (AWQ, OmniQuant, GPTQ) propagate them through the blocks from there.
* `LinearInputRecorder` accumulates, per Linear/Conv layer, the Gram matrix sum_t x_t x_t^T of its
  input rows; a layer's output error for a weight error E is then exactly the sum of
  diag(E H E^T) over all calibration tokens (OMSE's output objective).

Methods read `CalibrationData`; the pipeline that runs them is `wmquant.quant.calibration`.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import QuantizationError
from .config import PARTS
from .hooks import ForwardHooks


@dataclass
class BlockCall:
    """Sequences x (n, N, D) that enter a block with the same extra arguments (e.g. a mask)."""

    x: torch.Tensor
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    def to(self, device: torch.device | str) -> "BlockCall":
        move = lambda v: v.to(device) if isinstance(v, torch.Tensor) else v  # noqa: E731
        return BlockCall(self.x.to(device), tuple(move(a) for a in self.args), {k: move(v) for k, v in self.kwargs.items()})

    def with_x(self, x: torch.Tensor) -> "BlockCall":
        return BlockCall(x, self.args, self.kwargs)

    @property
    def num_sequences(self) -> int:
        return self.x.shape[0]


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
            and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu())
        )
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    return a == b


def _detached(value: Any, device: str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to(device, copy=True)
    if isinstance(value, tuple):
        return tuple(_detached(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v, device) for k, v in value.items()}
    return value


def _plain_tensors() -> contextlib.ExitStack:
    """No autograd, and outside inference mode even if the planner runs in it: recorded tensors
    must stay usable by methods that differentiate (OmniQuant) or update them in place."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode(False))
    stack.enter_context(torch.no_grad())
    return stack


class _PartReservoir:
    """Reservoir sampling (algorithm R) over the sequences entering one part's first block."""

    def __init__(self, max_samples: int, seed: int, device: str) -> None:
        self.max_samples = max_samples
        self.rng = random.Random(seed)
        self.device = device
        self.signatures: list[tuple[tuple, dict]] = []
        self.items: list[tuple[int, torch.Tensor]] = []
        self.seen = 0
        self.calls = 0

    def _signature_index(self, args: tuple, kwargs: dict) -> int:
        for index, (known_args, known_kwargs) in enumerate(self.signatures):
            if _same_value(known_args, args) and _same_value(known_kwargs, kwargs):
                return index
        self.signatures.append((_detached(args, self.device), _detached(kwargs, self.device)))
        return len(self.signatures) - 1

    def add(self, x: torch.Tensor, args: tuple, kwargs: dict) -> None:
        self.calls += 1
        signature = None
        for i in range(x.shape[0]):
            slot = len(self.items) if self.seen < self.max_samples else self.rng.randrange(self.seen + 1)
            self.seen += 1
            if slot >= self.max_samples:
                continue
            if signature is None:
                signature = self._signature_index(args, kwargs)
            item = (signature, x[i].detach().to(self.device, copy=True))
            if slot == len(self.items):
                self.items.append(item)
            else:
                self.items[slot] = item

    def calls_grouped(self, batch_size: int | None) -> list[BlockCall]:
        groups: dict[tuple, list[torch.Tensor]] = {}
        for signature, x in self.items:
            groups.setdefault((signature, tuple(x.shape)), []).append(x)
        batches = []
        for (signature, _), xs in groups.items():
            args, kwargs = self.signatures[signature]
            step = batch_size or len(xs)
            for start in range(0, len(xs), step):
                batches.append(BlockCall(torch.stack(xs[start:start + step]), args, kwargs))
        return batches


class BlockInputRecorder(ForwardHooks):
    """Records the inputs of `{part}.blocks.0` for each part, while the model runs in float.

    Use as a context manager (hooks removed on exit). Each forward call contributes its batch of
    sequences to a seeded reservoir of at most `max_samples` sequences per part; the block's extra
    arguments (e.g. `attend`, the predictor's mask) are kept once per distinct value.
    `inputs(part)` returns them as BlockCalls grouped by (extra arguments, sequence length).
    """

    def __init__(self, model: nn.Module, parts: tuple[str, ...] = PARTS, max_samples: int = 128, seed: int = 0,
                 device: str = "cpu") -> None:
        if max_samples < 1:
            raise QuantizationError(f"max_samples={max_samples} must be >= 1")
        super().__init__()
        self.model = model
        self.parts = tuple(parts)
        self.reservoirs = {part: _PartReservoir(max_samples, seed + i, device) for i, part in enumerate(self.parts)}
        for part in self.parts:
            first = first_block(model, part)
            self._handles.append(first.register_forward_pre_hook(self._hook(part), with_kwargs=True))

    def _hook(self, part: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if args:
                x, rest = args[0], args[1:]
            elif "x" in kwargs:
                x, rest = kwargs["x"], ()
                kwargs = {k: v for k, v in kwargs.items() if k != "x"}
            else:
                raise QuantizationError(f"{part}.blocks.0 was called without an input tensor")
            if x.dim() != 3:
                raise QuantizationError(f"{part}.blocks.0 input has shape {tuple(x.shape)}; expected (batch, tokens, dim)")
            with _plain_tensors():
                self.reservoirs[part].add(x, rest, kwargs)
        return hook

    def num_sequences(self, part: str) -> int:
        return len(self.reservoirs[part].items)

    def inputs(self, part: str, batch_size: int | None = None) -> list[BlockCall]:
        return self.reservoirs[part].calls_grouped(batch_size)

    def all_inputs(self, batch_size: int | None = None) -> dict[str, list[BlockCall]]:
        return {part: self.inputs(part, batch_size) for part in self.parts}

    def check_nonempty(self) -> None:
        for part, reservoir in self.reservoirs.items():
            if not reservoir.items:
                raise QuantizationError(
                    f"no calibration data reached {part}.blocks.0; the calibration run made no forward pass "
                    "through it (did every calibration episode finish before planning started?)"
                )


def first_block(model: nn.Module, part: str) -> nn.Module:
    blocks = getattr(getattr(model, part, None), "blocks", None)
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)) or len(blocks) == 0:
        raise QuantizationError(f"the model has no {part}.blocks; block-wise methods need {part}.blocks.0")
    return blocks[0]


def layer_input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows a layer multiplies by its 2-D weight: (rows, in) for Linear (after its input rotation,
    if a rotation method gave it one), unfolded patches for Conv."""
    if isinstance(module, nn.Linear):
        rows = x.reshape(-1, x.shape[-1])
        rotation = getattr(module, "input_rotation", None)
        return rows if rotation is None else rows @ rotation.to(rows.dtype)
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise QuantizationError("layer inputs of grouped, non-zero-padded or 'same'-padded convolutions are not supported")
        if isinstance(module, nn.Conv1d):
            x = x.unsqueeze(-1)
            kernel, stride = (module.kernel_size[0], 1), (module.stride[0], 1)
            padding, dilation = (module.padding[0], 0), (module.dilation[0], 1)
        else:
            kernel, stride, padding, dilation = module.kernel_size, module.stride, module.padding, module.dilation
        patches = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (B, C*k, L)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    raise QuantizationError(f"cannot record inputs of a {type(module).__name__}")


class LinearInputRecorder(ForwardHooks):
    """Accumulates H = sum_t x_t x_t^T (float64, (in, in)) and the row count per named layer."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.grams: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {name: 0 for name in names}
        self._handles += [model.get_submodule(name).register_forward_pre_hook(self._hook(name)) for name in names]

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            with _plain_tensors():
                rows = layer_input_rows(module, args[0].detach())
                rows = rows.to(torch.promote_types(rows.dtype, torch.float32))  # half inputs: float32 products
                gram = (rows.T @ rows).double()
                if name in self.grams:
                    self.grams[name] += gram
                else:
                    self.grams[name] = gram
                self.rows[name] += rows.shape[0]
        return hook

    def check_nonempty(self) -> None:
        for name, count in self.rows.items():
            if count == 0:
                raise QuantizationError(f"no calibration data reached {name}; the calibration run made no forward pass through it")


@dataclass
class RecordedRollout:
    """One recorded group of planning rollouts: start latents z_obs_0 (b, n, ...) and actions
    (b, H, A). When the start latents are `encode_obs` outputs of the same planning step (as in
    the MPC planners), also the model inputs of the group's distinct start observations
    (`observations`: visual (u, n, 3, S, S), proprio (u, n, P)) and each row's start among them
    (`start_index`, (b,)), so that a method can replay the rollouts through the encoder."""

    z_obs_0: dict[str, torch.Tensor]
    actions: torch.Tensor
    observations: dict[str, torch.Tensor] | None = None
    start_index: torch.Tensor | None = None

    @property
    def num_sequences(self) -> int:
        return int(self.actions.shape[0])

    def to(self, like: torch.Tensor) -> "RecordedRollout":
        """On `like`'s device, floating tensors in its dtype."""
        move = lambda d: None if d is None else {k: v.to(like) for k, v in d.items()}  # noqa: E731
        index = None if self.start_index is None else self.start_index.to(like.device)
        return RecordedRollout(move(self.z_obs_0), self.actions.to(like), move(self.observations), index)


def _distinct_starts(z_obs_0: dict[str, torch.Tensor]) -> tuple[list[int], torch.Tensor]:
    """(first row of each run of equal start latents, each row's run): the CEM samples of one
    episode are consecutive rows with one start."""
    keys = sorted(z_obs_0)
    firsts, index = [0], [0]
    for row in range(1, z_obs_0[keys[0]].shape[0]):
        if not all(torch.equal(z_obs_0[k][row], z_obs_0[k][row - 1]) for k in keys):
            firsts.append(row)
        index.append(len(firsts) - 1)
    return firsts, torch.tensor(index)


def _could_encode(obs: dict[str, torch.Tensor], z: dict[str, torch.Tensor], z_obs_0: dict[str, torch.Tensor]) -> bool:
    """Whether the encoding z of obs has the keys and per-row shapes of the start latents z_obs_0."""
    return ({"visual", "proprio"} <= set(obs) and set(z) == set(z_obs_0)
            and all(z[k].shape[1:] == z_obs_0[k].shape[1:] for k in z))


class RolloutRecorder:
    """Records planning rollouts: the (z_obs_0, actions) of `model.rollout_latent` calls, as a
    seeded reservoir of at most `max_sequences` sequences kept in groups of `group` consecutive
    rows (the CEM samples of one episode share their start latent), on the CPU.

    It also watches `model.encode_obs` (when the model has it): each kept group's start latents
    are looked up among the last few encodings, and the observations they encode are kept with
    the group (`RecordedRollout.observations`); and every encoded frame (the goals and each MPC
    step's observations) enters a seeded reservoir of at most `max_frames` frames (`frames()`).
    Both let a method see the encoder, which acts before the start latents.

    It shadows the model's methods with instance attributes while it records, as the planning
    engine's compiled path shadows `predict`."""

    RECENT_ENCODINGS = 4  # the planners encode the goals, then each step's observations, then roll out

    def __init__(self, model: nn.Module, max_sequences: int = 256, group: int = 32, seed: int = 0,
                 max_frames: int = 64) -> None:
        if not hasattr(model, "rollout_latent"):
            raise QuantizationError("recording rollouts needs a world model with rollout_latent(z_obs_0, actions)")
        self.model = model
        self.max_groups = max(1, max_sequences // group)
        self.group = group
        self.groups: list[RecordedRollout] = []
        self.seen = 0
        self._rng = random.Random(seed)
        self._recent: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []
        self._frames: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._frames_seen = 0
        self._frame_rng = random.Random(seed + 1)
        self.max_frames = max_frames
        original = model.rollout_latent

        def recording(z_obs_0: dict[str, torch.Tensor], act: torch.Tensor) -> dict[str, torch.Tensor]:
            self._record(z_obs_0, act)
            return original(z_obs_0, act)

        model.rollout_latent = recording
        if hasattr(model, "encode_obs"):
            original_encode = model.encode_obs

            def encoding(obs: dict[str, torch.Tensor], *args, **kwargs) -> dict[str, torch.Tensor]:
                z = original_encode(obs, *args, **kwargs)
                self._recent = (self._recent + [(obs, z)])[-self.RECENT_ENCODINGS:]
                self._record_frames(obs)
                return z

            model.encode_obs = encoding

    def _record_frames(self, obs: dict[str, torch.Tensor]) -> None:
        if set(obs) != {"visual", "proprio"}:
            return
        visual = obs["visual"].flatten(0, 1)
        proprio = obs["proprio"].flatten(0, 1)
        for i in range(visual.shape[0]):
            self._frames_seen += 1
            slot = (len(self._frames) if len(self._frames) < self.max_frames
                    else self._frame_rng.randrange(self._frames_seen))
            if slot >= self.max_frames:
                continue
            with _plain_tensors():
                item = (visual[i].detach().cpu().clone(), proprio[i].detach().cpu().clone())
            if slot == len(self._frames):
                self._frames.append(item)
            else:
                self._frames[slot] = item

    def _observations_of(self, z_obs_0: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
        """The observations whose encodings are the rows' start latents (found among the recent
        encodings by exact equality), or None when one of them was not encoded recently."""
        firsts, index = _distinct_starts(z_obs_0)
        found: list[dict[str, torch.Tensor]] = []
        for row in firsts:
            for obs, z in reversed(self._recent):
                if not _could_encode(obs, z, z_obs_0):
                    continue
                same = torch.ones(z["visual"].shape[0], dtype=torch.bool, device=z["visual"].device)
                for k in z:
                    same &= (z[k] == z_obs_0[k][row].to(z[k])).flatten(1).all(dim=1)
                hits = same.nonzero()
                if len(hits):
                    found.append({k: obs[k][int(hits[0])] for k in ("visual", "proprio")})
                    break
            else:
                return None
        return {k: torch.stack([f[k] for f in found]).detach().cpu().clone() for k in ("visual", "proprio")}, index

    def _record(self, z_obs_0: dict[str, torch.Tensor], act: torch.Tensor) -> None:
        for start in range(0, act.shape[0], self.group):
            self.seen += 1
            # reservoir sampling (algorithm R): only a kept group is copied off the planner's tensors
            slot = len(self.groups) if len(self.groups) < self.max_groups else self._rng.randrange(self.seen)
            if slot >= self.max_groups:
                continue
            sl = slice(start, start + self.group)
            with _plain_tensors():  # the rollout method differentiates through what is recorded here
                rows = {k: v[sl] for k, v in z_obs_0.items()}
                starts = self._observations_of(rows) if self._recent else None
                item = RecordedRollout({k: v.detach().cpu().clone() for k, v in rows.items()},
                                       act[sl].detach().cpu().clone(),
                                       *(starts if starts is not None else (None, None)))
            if slot == len(self.groups):
                self.groups.append(item)
            else:
                self.groups[slot] = item

    def frames(self) -> dict[str, torch.Tensor] | None:
        """The recorded encoder inputs, one frame each: visual (m, 1, 3, S, S), proprio (m, 1, P)."""
        if not self._frames:
            return None
        return {"visual": torch.stack([v for v, _ in self._frames])[:, None],
                "proprio": torch.stack([p for _, p in self._frames])[:, None]}

    def remove(self) -> None:
        for name in ("rollout_latent", "encode_obs"):
            if name in vars(self.model):
                delattr(self.model, name)

    def check_nonempty(self) -> None:
        if not self.groups:
            raise QuantizationError("no planning rollout reached the world model during calibration")


@dataclass
class CalibrationData:
    """What pass 1 recorded, handed to a method's `transform`."""

    block_inputs: dict[str, list[BlockCall]] = field(default_factory=dict)
    layer_grams: dict[str, tuple[torch.Tensor, int]] = field(default_factory=dict)
    act_stats: dict[str, torch.Tensor] | None = None
    rollouts: list[RecordedRollout] = field(default_factory=list)
    encoder_frames: dict[str, torch.Tensor] | None = None  # frames the planners encoded (RolloutRecorder.frames)
