"""`wmquant bench`: what planning with a world model costs on this machine, in time and memory.

Sections (`--sections`, default all):

* peaks: the machine's measured matrix-product peaks (FP32 with TF32 off, TF32, BF16, INT8 via
  `torch._int_mm`, FP8 E4M3 via `torch._scaled_mm` with row-wise scales) and device-copy
  bandwidth: the references every rate below is a fraction of.
* cem: one CEM optimisation step (300 samples, horizon 5) per episode, for the shipped models and
  for random-weight DINO-WM-scale models (num_hist 1 and 3), in each precision: seconds per
  episode-step, the predictor's achieved TFLOP/s (from `predictor_flops`, an analytic count of its
  matmuls) and that as a fraction of the measured peak of its precision, peak memory. With
  `--original`, the original procedure too (start frame re-encoded for every sample, one episode
  at a time, FP32). From these, the worst-case (no episode ever succeeds) protocol times.
* protocol: the full Wall protocol on the shipped Wall model (`run_plan`, exact FP32) with
  success-skipping on and off, asserting identical results; PushT with `--pusht-data DIR`.
* kernels: real-kernel W8A8 (INT8 and FP8) and W4A16 rollouts against FP32 and BF16 (latency,
  peak memory, weight bytes) at the CEM batch and at a robot-side batch of 32 samples, and their
  agreement with fake quantization.

`--quick` shrinks everything to CPU-sized shapes (a smoke run, < 60 s on 2 cores). The report is
printed as a table and written as JSON (`--json`, atomically, after every measurement, so a run
cut short keeps what it measured).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import statistics
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from . import io as wio
from .errors import ConfigError, QuantizationError

SECTIONS = ("peaks", "cem", "protocol", "kernels")
REPORT_SCHEMA = "wmquant.bench/1"
#: The paper's protocols: episodes x MPC iterations x CEM steps per iteration.
PROTOCOLS = {"wall": (50, 50, 10), "pusht": (50, 30, 30)}
#: The original procedure's per-episode-step times measured for the issue (H100, FP32).
ORIGINAL_REFERENCE_SECONDS = {"dinowm_h1": 0.52, "dinowm_h3": 1.85}

DINO_WM = {"img_size": 224, "frameskip": 5, "proprio_dim": 4, "action_dim": 2, "decoder": None,
           "encoder": {"backend": "dinov2", "preset": "dinov2_vits14"}, "predictor": {"dropout": 0.0}}
TINY = {"img_size": 32, "frameskip": 5, "proprio_dim": 2, "action_dim": 2, "decoder": None,
        "encoder": {"backend": "vit", "patch_size": 8, "dim": 32, "depth": 1, "heads": 2, "out_dim": 16},
        "predictor": {"depth": 2, "heads": 2, "dim_head": 16, "mlp_dim": 64, "dropout": 0.0}}


# --- FLOP counts ------------------------------------------------------------------------------------

def predictor_flops(model: nn.Module, horizon: int, given_frames: int = 1) -> int:
    """Floating-point operations (2 per multiply-add) of the predictor's matmuls in one rollout of
    one sequence: qkv, QK^T and AV over the query/key pairs the frame-causal mask allows, proj, fc1,
    fc2. The rollout calls the predictor once per frame from `given_frames` to `horizon`, each time
    on the last min(frames so far, num_hist) frames."""
    predictor = model.predictor
    attn, mlp = predictor.blocks[0].attn, predictor.blocks[0].mlp
    dim, heads, dim_head = predictor.dim, attn.num_heads, attn.dim_head
    inner, hidden, patches = heads * dim_head, mlp.fc1.out_features, predictor.num_patches
    total = 0
    for frames in range(given_frames, horizon + 1):
        window = min(frames, model.num_hist)
        tokens = window * patches
        pairs = patches * patches * window * (window + 1) // 2
        linear = 2 * tokens * (dim * 3 * inner + inner * dim + 2 * dim * hidden)
        attention = 2 * 2 * pairs * inner
        total += len(predictor.blocks) * (linear + attention)
    return total


def encoder_flops_per_frame(model: nn.Module) -> int:
    """Matmul FLOPs of encoding one frame: patch embedding and the transformer blocks."""
    encoder = model.encoder
    patches = encoder.num_patches(model.encoder_img_size)
    tokens = patches + (1 if encoder.cls_token is not None else 0) + encoder.num_register_tokens
    dim, hidden = encoder.dim, encoder.mlp_dim
    block = 2 * tokens * (3 * dim * dim + dim * dim + 2 * dim * hidden) + 2 * 2 * tokens * tokens * dim
    return 2 * patches * 3 * encoder.patch_size**2 * dim + len(encoder.blocks) * block


# --- timing -----------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[int], Any], device: torch.device, warmup: int, repeats: int) -> dict[str, Any]:
    """Median seconds of fn(i) over `repeats` calls after `warmup` calls (CUDA events on CUDA).
    The first warm-up call is timed on its own (it includes compilation and allocator growth)."""
    first = None
    for i in range(warmup):
        start = time.perf_counter()
        fn(i)
        _sync(device)
        if first is None:
            first = time.perf_counter() - start
    times = []
    for i in range(repeats):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn(warmup + i)
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1e3)
        else:
            start = time.perf_counter()
            fn(warmup + i)
            times.append(time.perf_counter() - start)
    return {"median_seconds": statistics.median(times), "min_seconds": min(times), "times_seconds": times,
            "first_call_seconds": first}


@contextlib.contextmanager
def peak_memory(device: torch.device, out: dict[str, Any]) -> Any:
    """Record the peak device memory allocated inside the block (bytes; None off CUDA)."""
    if device.type != "cuda":
        out["peak_memory_bytes"] = None
        yield
        return
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    yield
    _sync(device)
    out["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(device))


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 for matmuls and cuDNN convolutions (the encoder's patch embedding) on or off."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# --- settings ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    """How the model runs: engine precision, torch.compile, and the quantization backend."""

    name: str
    precision: str = "fp32"
    compile: bool | str = False  # or a torch.compile mode ("reduce-overhead": with CUDA graphs)
    quant: str | None = None  # None | "w8a8" | "fp8_w8a8" | "w4a16" | "w4a16_dequant"
    peak: str = ""  # which GEMM peak its rate is a fraction of
    int8_kernel: str = "torch"  # engine.int8_kernel for "w8a8": torch | triton (fused, wmquant.kernels.fused_int8)
    int4_kernel: str = "auto"  # for "w4a16": auto | int4pack | dequant (wmquant.kernels.int4.KERNELS)

    def __post_init__(self) -> None:
        if not self.peak:
            peak = {"w8a8": "int8", "fp8_w8a8": "fp8"}.get(self.quant or "", self.precision)
            object.__setattr__(self, "peak", peak)


@dataclass
class Settings:
    device: torch.device
    quick: bool
    samples: int = 300
    horizon: int = 5
    warmup: int = 1
    repeats: int = 3
    gemm_sizes: tuple[int, ...] = (8192,)
    gemm_repeats: int = 10
    cases: tuple[str, ...] = ("wall", "pusht", "dinowm_h1", "dinowm_h3")
    episodes: dict[str, int] = field(default_factory=lambda: {"wall": 50, "pusht": 50, "dinowm_h1": 4, "dinowm_h3": 2})
    kernel_case: str = "dinowm_h1"
    small_batch: int = 32  # the kernels' second batch: a robot-side planner's samples per step
    protocol_overrides: tuple[str, ...] = ()
    compile_cases: tuple[str, ...] = ("dinowm_h1",)
    original: bool = False
    pusht_data: str | None = None
    protocol_compile: bool = False

    @classmethod
    def make(cls, device: torch.device, quick: bool, original: bool, pusht_data: str | None,
             cases: Sequence[str] | None, protocol_compile: bool) -> "Settings":
        if quick:
            settings = cls(device=device, quick=True, samples=32, warmup=1, repeats=2,
                           gemm_sizes=(512, 1024) if device.type == "cpu" else (4096,), gemm_repeats=3,
                           cases=("tiny_h1", "tiny_h3", "wall"), episodes={"tiny_h1": 2, "tiny_h3": 2, "wall": 2},
                           kernel_case="tiny_h1", compile_cases=(), small_batch=8,
                           protocol_overrides=("n_evals=2", "planner.max_iter=2", "planner.sub_planner.num_samples=16",
                                               "planner.sub_planner.topk=4", "planner.sub_planner.opt_steps=2"))
        elif device.type == "cpu":
            settings = cls(device=device, quick=False, gemm_sizes=(1024,), compile_cases=(),
                           episodes={"wall": 4, "pusht": 2, "dinowm_h1": 1, "dinowm_h3": 1})
        else:
            settings = cls(device=device, quick=False)
        settings.original = original
        settings.pusht_data = pusht_data
        settings.protocol_compile = protocol_compile
        if cases:
            settings.cases = tuple(cases)
        return settings


# --- models -----------------------------------------------------------------------------------------

@dataclass
class Case:
    key: str
    model: nn.Module
    normalization: Any
    img_size: int
    action_width: int  # normalised model action per step: env action dim x frameskip
    description: str


def _unit_normalization(proprio_dim: int, action_dim: int):
    from .data.base import Normalization

    return Normalization(action_mean=torch.zeros(action_dim), action_std=torch.ones(action_dim),
                         proprio_mean=torch.zeros(proprio_dim), proprio_std=torch.ones(proprio_dim),
                         state_mean=torch.zeros(proprio_dim), state_std=torch.ones(proprio_dim))


def build_case(key: str) -> Case:
    """The shipped models by name; `dinowm_h<n>` / `tiny_h<n>`: random weights, num_hist n."""
    from .models.checkpoint import build_world_model

    if key in ("wall", "pusht"):
        from omegaconf import OmegaConf

        from .planning.session import load_planning_model

        bundle = load_planning_model(OmegaConf.create({"model_name": key, "ckpt_base_path": None}))
        return Case(key, bundle.model, bundle.normalization, bundle.img_size, bundle.action_dim * bundle.frameskip,
                    f"shipped {key} model")
    for prefix, base, text in (("dinowm_h", DINO_WM, "DINO-WM scale (ViT-S/14 at 196 px, predictor 6 x 404, 16 heads, MLP 2048), random weights"),
                               ("tiny_h", TINY, "tiny random model (CPU smoke test)")):
        if key.startswith(prefix) and key[len(prefix):].isdigit():
            torch.manual_seed(0)
            num_hist = int(key[len(prefix):])
            model = build_world_model({**base, "num_hist": num_hist}).eval()
            return Case(key, model, _unit_normalization(base["proprio_dim"], base["action_dim"]), base["img_size"],
                        base["action_dim"] * base["frameskip"], f"{text}, num_hist {num_hist}")
    raise ConfigError(f"unknown bench model {key!r}; valid: wall, pusht, dinowm_h<N>, tiny_h<N>")


def w8a8_schemes() -> dict[str, Any]:
    """The W8A8 schemes of the real kernels, by `Variant.quant`: INT8 and FP8 E4M3, weights per
    channel, activations per token (dynamic, so no calibration)."""
    from .quant import QuantScheme

    return {"w8a8": QuantScheme(w_bits=8, a_bits=8, a_granularity="per_token"),
            "fp8_w8a8": QuantScheme(w_bits=8, a_bits=8, a_granularity="per_token", w_format="fp8_e4m3",
                                    a_format="fp8_e4m3")}


def quantize_for(variant: Variant, model: nn.Module) -> nn.Module:
    """A copy of `model` with its predictor blocks quantized as the variant says (RTN, no calibration:
    W8A8, INT8 or FP8, uses dynamic per-token activations) and converted to real kernels."""
    from .kernels.real import set_int8_kernel_, to_real_backend_
    from .quant import QuantConfig, QuantScheme, quantize_

    if variant.quant is None:
        return model
    scheme = w8a8_schemes().get(variant.quant) or QuantScheme(w_bits=4, w_group_size=128)
    quantized = quantize_(copy.deepcopy(model), QuantConfig(predictor=scheme))
    real = to_real_backend_(quantized, int4_kernel=variant.int4_kernel)
    set_int8_kernel_(real, variant.int8_kernel)
    return real


# --- measurements -----------------------------------------------------------------------------------

def _random_obs(case: Case, episodes: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    size = case.img_size
    proprio_dim = int(case.normalization.proprio_mean.numel())
    return {"visual": rng.integers(0, 256, (episodes, size, size, 3), dtype=np.uint8),
            "proprio": rng.normal(size=(episodes, proprio_dim)).astype(np.float32)}


def measure_cem_step(case: Case, variant: Variant, settings: Settings, peaks: dict[str, Any]) -> dict[str, Any]:
    """One CEM optimisation step per episode (CEMPlanner.plan with opt_steps=1) for a batch of
    episodes, with everything the step does: noise, rollouts of every sample, costs, elite update."""
    from .planning.cem import CEMConfig, CEMPlanner, noise_generator
    from .planning.engine import Engine
    from .planning.objective import Objective

    device, episodes, samples = settings.device, settings.episodes.get(case.key, 2), settings.samples
    model = quantize_for(variant, case.model)
    engine = Engine(model, case.normalization, case.img_size, Objective(), device=device,
                    precision=variant.precision, compile=variant.compile)
    planner = CEMPlanner(CEMConfig(horizon=settings.horizon, topk=min(30, samples), num_samples=samples, opt_steps=1),
                         case.action_width)
    encode = time_calls(lambda i: engine.encode(_random_obs(case, episodes, i)), device, 1, settings.repeats)
    z0, goal = engine.encode(_random_obs(case, episodes, 1)), engine.encode(_random_obs(case, episodes, 2))
    result: dict[str, Any] = {"episodes": episodes, "samples": samples, "horizon": settings.horizon,
                              "chunk_episodes": engine.episodes_per_call(episodes, samples, settings.horizon)}
    with peak_memory(device, result):
        timing = time_calls(lambda i: planner.plan(engine, z0, goal, [noise_generator(0, e, i) for e in range(episodes)]),
                            device, settings.warmup, settings.repeats)
    step = timing["median_seconds"] / episodes
    flops = predictor_flops(model, settings.horizon) * samples
    peak = (peaks.get(variant.peak) or {}).get("tflops")
    result.update({
        "seconds_per_episode_step": step,
        "first_call_seconds": timing["first_call_seconds"],
        "times_seconds": timing["times_seconds"],
        "encode_seconds_per_episode": encode["median_seconds"] / episodes,
        "predictor_flops_per_episode_step": flops,
        "predictor_tflops": flops / step / 1e12,
        "predictor_fraction_of_peak": (flops / step / 1e12) / peak if peak else None,
        "peak": variant.peak,
        "compile_status": engine.compile_status,
    })
    if variant.compile:
        actions = torch.randn(episodes, samples, settings.horizon, case.action_width,
                              generator=torch.Generator().manual_seed(9)).to(device)
        result["compiled_vs_eager_max_rel_diff"] = _compiled_vs_eager(engine, z0, goal, actions)
    if variant.quant:
        from .kernels.real import real_weight_bytes

        result["weight_bytes"] = real_weight_bytes(model)
    return result


def _compiled_vs_eager(engine, z0: dict[str, torch.Tensor], goal: dict[str, torch.Tensor], actions: torch.Tensor) -> float:
    """max |compiled - eager| / max |eager| over the costs of one batch of samples: a compiler that
    ran but computed something else shows here."""
    from dataclasses import replace

    compiled = engine.sample_costs(z0, goal, actions)
    eager = replace(engine, compile=False).sample_costs(z0, goal, actions)
    return float((compiled - eager).abs().max() / eager.abs().max())


def measure_original(case: Case, settings: Settings, peaks: dict[str, Any]) -> dict[str, Any]:
    """The original procedure, one episode-step: the start frame repeated for all samples and
    encoded with them (`WorldModel.rollout` from observations), FP32 with TF32 off, one episode."""
    from .data.transforms import to_model_input
    from .planning.objective import Objective

    device, samples, model = settings.device, settings.samples, case.model.to(settings.device).eval()
    objective = Objective()
    obs = _random_obs(case, 2, 3)
    visual = to_model_input(torch.as_tensor(obs["visual"]).to(device), case.img_size)[:, None]  # (2, 1, 3, S, S)
    proprio = case.normalization.normalize_proprio(torch.as_tensor(obs["proprio"]).to(device))[:, None]
    gen = torch.Generator().manual_seed(0)
    actions = [torch.randn(samples, settings.horizon, case.action_width, generator=gen).to(device) for _ in range(2)]

    @torch.no_grad()
    def episode_step(i: int) -> None:
        z_goal = model.encode_obs({"visual": visual[1:], "proprio": proprio[1:]})
        repeated = {"visual": visual[:1].expand(samples, -1, -1, -1, -1).contiguous(),
                    "proprio": proprio[:1].expand(samples, -1, -1).contiguous()}
        z_obses, _ = model.rollout(repeated, actions[i % 2])
        goal = {k: v.expand(samples, *v.shape[1:]) for k, v in z_goal.items()}
        costs = objective(z_obses, goal)
        topk = torch.argsort(costs)[:30]
        actions[i % 2][topk].mean(0), actions[i % 2][topk].std(0)

    with tf32(False):
        result: dict[str, Any] = {"samples": samples, "horizon": settings.horizon}
        with peak_memory(device, result):
            timing = time_calls(episode_step, device, settings.warmup, settings.repeats)
    step = timing["median_seconds"]
    flops = predictor_flops(model, settings.horizon) * samples
    peak = (peaks.get("fp32") or {}).get("tflops")
    result.update({
        "seconds_per_episode_step": step,
        "times_seconds": timing["times_seconds"],
        "predictor_flops_per_episode_step": flops,
        "encoder_flops_per_episode_step": encoder_flops_per_frame(model) * samples,
        "predictor_tflops": flops / step / 1e12,
        "predictor_fraction_of_peak": (flops / step / 1e12) / peak if peak else None,
        "peak": "fp32",
    })
    return result


def _gemm_rate(dtype: str, n: int, device: torch.device, repeats: int) -> dict[str, Any]:
    """Rate of n x n x n products on random data (two input pairs in turn, so no repeat reads a
    cache the previous one filled): TFLOP/s, or INT8 TOP/s through torch._int_mm."""
    gen = torch.Generator(device=device).manual_seed(n)
    if dtype == "int8":
        pairs = [tuple(torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=gen, device=device)
                       for _ in range(2)) for _ in range(2)]
        fn = lambda i: torch._int_mm(pairs[i % 2][0], pairs[i % 2][1].t())  # noqa: E731
    elif dtype == "fp8":
        from .kernels.fp8 import FP8_DTYPE, fp8_matmul, scaled_mm_out_dtype

        pairs = [tuple(torch.randn(n, n, generator=gen, device=device).to(FP8_DTYPE) for _ in range(2))
                 for _ in range(2)]
        row_scale, col_scale = torch.ones(n, 1, device=device), torch.ones(1, n, device=device)
        out_dtype = scaled_mm_out_dtype(str(device))
        fn = lambda i: fp8_matmul(pairs[i % 2][0], pairs[i % 2][1], row_scale, col_scale, out_dtype)  # noqa: E731
    else:
        torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
        pairs = [tuple(torch.randn(n, n, generator=gen, device=device).to(torch_dtype) for _ in range(2))
                 for _ in range(2)]
        # the layout of a Linear layer (x @ W^T), as the model runs it: on CPUs without native BF16,
        # `a @ b` with a row-major b takes a path 20x slower than `a @ b.t()`, and a "peak" measured
        # that way sat below the model's own rate
        fn = lambda i: torch.nn.functional.linear(pairs[i % 2][0], pairs[i % 2][1])  # noqa: E731
    with tf32(dtype == "tf32"):
        timing = time_calls(fn, device, 2, repeats)
    # A peak is a best case: the fastest repeat (the median is kept for reference).
    return {"size": n, "median_seconds": timing["median_seconds"], "min_seconds": timing["min_seconds"],
            "tflops": 2 * n**3 / timing["min_seconds"] / 1e12}


def measure_peaks(settings: Settings) -> dict[str, Any]:
    """Matrix-product rates (best over `gemm_sizes` and repeats) and device-copy bandwidth."""
    device = settings.device
    peaks: dict[str, Any] = {}
    for dtype in ("fp32", "tf32", "bf16", "int8", "fp8"):
        try:
            runs = [_gemm_rate(dtype, n, device, settings.gemm_repeats) for n in settings.gemm_sizes]
        except (RuntimeError, QuantizationError) as err:  # a device without the op keeps the other peaks
            peaks[dtype] = {"error": _error_text(err)}
            continue
        best = max(runs, key=lambda r: r["tflops"])
        peaks[dtype] = {**best, "runs": runs}
    if device.type == "cpu":
        peaks["tf32"]["note"] = "no TF32 on the CPU: the same FP32 product"
    numel = (1 << 28 if device.type == "cuda" else 1 << 24)
    src, dst = torch.rand(numel, device=device), torch.empty(numel, device=device)
    timing = time_calls(lambda i: dst.copy_(src), device, 2, settings.gemm_repeats)
    peaks["copy"] = {"bytes": 2 * 4 * numel, "median_seconds": timing["median_seconds"],
                     "gb_per_s": 2 * 4 * numel / timing["median_seconds"] / 1e9}
    return peaks


def _error_text(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"


# --- sections ---------------------------------------------------------------------------------------

def _variants_for(case_key: str, settings: Settings) -> list[Variant]:
    """Most important first (a run cut short keeps those): the exact default, BF16, then the rest."""
    if case_key not in settings.compile_cases:
        return [Variant("fp32"), Variant("bf16", precision="bf16"), Variant("tf32", precision="tf32")]
    return [Variant("fp32"), Variant("bf16", precision="bf16"), Variant("bf16_compiled", precision="bf16", compile=True),
            Variant("bf16_compiled_cuda_graphs", precision="bf16", compile="reduce-overhead"),
            Variant("tf32", precision="tf32"), Variant("fp32_compiled", compile=True)]


def _kernel_variants(settings: Settings) -> list[Variant]:
    """Real-kernel rollouts; the rest of the model runs in BF16 on CUDA (FP32 on the CPU)."""
    half = "bf16" if settings.device.type == "cuda" else "fp32"
    variants = [Variant("fp8_w8a8_real", precision=half, quant="fp8_w8a8"),
                Variant("w8a8_real", precision=half, quant="w8a8"),
                # on CUDA the packed kernel by name ("auto" would pick by the batch: kernels/int4.py)
                Variant("w4a16_real", precision=half, quant="w4a16", peak="bf16",
                        int4_kernel="int4pack" if settings.device.type == "cuda" else "auto"),
                Variant("w4a16_real_dequant", precision=half, quant="w4a16_dequant", peak="bf16", int4_kernel="dequant")]
    if settings.device.type == "cuda":
        variants[:0] = [Variant("fp8_w8a8_real_compiled", precision=half, quant="fp8_w8a8", compile=True),
                        Variant("w8a8_real_compiled", precision=half, quant="w8a8", compile=True),
                        Variant("w8a8_real_triton", precision=half, quant="w8a8", int8_kernel="triton"),
                        Variant("w8a8_real_triton_compiled", precision=half, quant="w8a8", int8_kernel="triton",
                                compile=True)]
    return variants


def _guarded(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one measurement; a failure is recorded in the report instead of ending the benchmark."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - one broken variant must not lose the others' numbers
        return {"error": _error_text(err), "traceback": traceback.format_exc(limit=4)}
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class Bench:
    """Runs the sections, keeps the report, writes it after each section."""

    def __init__(self, settings: Settings, json_path: Path | None, log: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.json_path = json_path
        self.log = log
        self.cases: dict[str, Case] = {}
        self.report: dict[str, Any] = {
            "schema": REPORT_SCHEMA, "quick": settings.quick, "device": _device_text(settings.device),
            "torch": torch.__version__, "settings": {"samples": settings.samples, "horizon": settings.horizon,
                                                     "warmup": settings.warmup, "repeats": settings.repeats},
            "sections": {}, "section_seconds": {},
        }

    def case(self, key: str) -> Case:
        if key not in self.cases:
            self.cases[key] = build_case(key)
        return self.cases[key]

    @property
    def peaks(self) -> dict[str, Any]:
        return self.report["sections"].get("peaks", {})

    def save(self) -> None:
        # The targets name one H100 and the paper's shapes; a quick run measures neither.
        self.report["targets"] = {} if self.settings.quick else evaluate_targets(self.report)
        self.report["consistency_problems"] = check_report(self.report)
        if self.json_path is not None:
            wio.write_json(self.json_path, self.report)

    def run(self, sections: Sequence[str]) -> dict[str, Any]:
        for section in SECTIONS:
            if section not in sections:
                continue
            start = time.perf_counter()
            self.log(f"[bench] {section} ...")
            getattr(self, f"section_{section}")(self.report["sections"].setdefault(section, {}))
            self.report["section_seconds"][section] = time.perf_counter() - start
            self.save()
        return self.report

    def measure(self, out: dict[str, Any], key: str, label: str, fn: Callable[[], dict[str, Any]]) -> None:
        """out[key] = fn() (or its failure), then save: a benchmark cut short keeps what it measured."""
        self.log(f"[bench]   {label}")
        out[key] = _guarded(fn)
        self.save()

    def section_peaks(self, out: dict[str, Any]) -> None:
        out.update(measure_peaks(self.settings))

    def _require_peaks(self) -> None:
        if not self.report["sections"].get("peaks"):
            self.report["sections"]["peaks"] = measure_peaks(self.settings)

    def section_cem(self, out: dict[str, Any]) -> None:
        self._require_peaks()
        for key in self.settings.cases:
            case = self.case(key)
            entry = out.setdefault(key, {"description": case.description,
                                         "predictor_flops_per_rollout": predictor_flops(case.model, self.settings.horizon),
                                         "variants": {}})
            if self.settings.original and key.startswith(("dinowm", "tiny")):
                self.measure(entry, "original", f"cem {key} original procedure",
                             lambda: measure_original(case, self.settings, self.peaks))
            for variant in _variants_for(key, self.settings):
                self.measure(entry["variants"], variant.name, f"cem {key} {variant.name}",
                             lambda: measure_cem_step(case, variant, self.settings, self.peaks))
                entry["protocol_estimates"] = protocol_estimates(case.model, entry)

    def section_protocol(self, out: dict[str, Any]) -> None:
        for env, both in (("wall", True), ("pusht", False)):
            if env == "pusht" and not self.settings.pusht_data:
                continue
            self.log(f"[bench]   protocol {env} (skipping on{', then off' if both else ''})")
            entry = out.setdefault(env, {})
            try:
                run_protocol_pair(env, self.settings, entry, self.save, both=both)
            except Exception as err:  # noqa: BLE001 - keep the other numbers
                entry.update({"error": _error_text(err), "traceback": traceback.format_exc(limit=4)})
            self.save()

    def section_kernels(self, out: dict[str, Any]) -> None:
        """Real-kernel rollouts against FP32 and BF16 at the CEM batch (`samples`), their agreement
        with fake quantization, then the same at a robot-side batch (`small_batch`), where
        weight-only quantization is memory-bound."""
        self._require_peaks()
        key = self.settings.kernel_case
        case = self.case(key)
        out.update({"model": key, "float_weight_bytes": _float_weight_bytes(case.model)})
        variants = out.setdefault("variants", {})
        cem = self.report["sections"].get("cem", {}).get(key, {}).get("variants", {})
        for name in ("fp32", "bf16", "bf16_compiled"):
            if name in cem and "error" not in cem[name]:
                variants[name] = {**cem[name], "reused_from": "cem"}
        self._kernel_rows(case, out, self.settings, f"kernels {key}")
        self.measure(out, "agreement", f"kernels {key} real vs fake agreement", lambda: kernel_agreement(case, self.settings))
        small = dataclasses.replace(self.settings, samples=self.settings.small_batch)
        entry = out.setdefault("small_batch", {"samples": small.samples})
        self._kernel_rows(case, entry, small, f"kernels {key} at {small.samples} samples")
        self.measure(out, "int4_crossover", f"kernels {key} W4A16 packed against dequantize, by rows",
                     lambda: int4_crossover(case, self.settings))

    def _kernel_rows(self, case: Case, entry: dict[str, Any], settings: Settings, label: str) -> None:
        """The float baselines not yet in entry["variants"] (FP32, BF16, compiled BF16 on CUDA), then
        every real-kernel variant, each measured into it; entry["speedups"] follows every row."""
        variants = entry.setdefault("variants", {})
        baseline = [Variant("fp32"), Variant("bf16", precision="bf16")]
        if settings.device.type == "cuda":
            baseline.append(Variant("bf16_compiled", precision="bf16", compile=True))
        for variant in [v for v in baseline if v.name not in variants] + _kernel_variants(settings):
            self.measure(variants, variant.name, f"{label} {variant.name}",
                         lambda: measure_cem_step(case, variant, settings, self.peaks))
            entry["speedups"] = kernel_speedups(variants)


def _device_text(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs)"
    return f"cpu ({torch.get_num_threads()} threads)"


def _float_weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of the predictor block Linears' weights in FP32, FP16/BF16."""
    numel = sum(m.weight.numel() for name, m in model.named_modules()
                if isinstance(m, nn.Linear) and name.startswith("predictor.blocks."))
    return {"fp32_bytes": 4 * numel, "fp16_bytes": 2 * numel}


def kernel_agreement(case: Case, settings: Settings) -> dict[str, Any]:
    """Relative L2 difference between fake-quant and real-kernel rollouts of the same quantized
    model on the same inputs (engine precision fp32), and of fake quant against the float model."""
    from .kernels import fused_int8
    from .kernels.real import set_int8_kernel_, to_real_backend_
    from .planning.engine import Engine
    from .planning.objective import Objective
    from .quant import QuantConfig, QuantScheme, quantize_

    device, batch = settings.device, 16
    fused = device.type == "cuda" and fused_int8.available()  # the INT8 layers on the fused Triton kernels too
    out: dict[str, Any] = {}
    actions = torch.randn(batch, settings.horizon, case.action_width, generator=torch.Generator().manual_seed(11))
    for name, scheme in (*w8a8_schemes().items(), ("w4a16", QuantScheme(w_bits=4, w_group_size=128))):
        fake = quantize_(copy.deepcopy(case.model), QuantConfig(predictor=scheme))
        real = to_real_backend_(copy.deepcopy(fake))
        models = [("float", case.model), ("fake", fake), ("real", real)]
        if name == "w8a8" and fused:
            real_triton = copy.deepcopy(real)
            set_int8_kernel_(real_triton, "triton")
            models.append(("real_triton", real_triton))
        results = {}
        for label, model in models:
            engine = Engine(model, case.normalization, case.img_size, Objective(), device=device)
            z0 = {k: v.expand(batch, *v.shape[1:]) for k, v in engine.encode(_random_obs(case, 1, 7)).items()}
            results[label] = engine.rollout(z0, actions)["visual"]

        def rel(a: torch.Tensor, b: torch.Tensor) -> float:
            return float((a - b).norm() / b.norm())

        out[name] = {"real_vs_fake_rel_l2": rel(results["real"], results["fake"]),
                     "fake_vs_float_rel_l2": rel(results["fake"], results["float"])}
        if "real_triton" in results:
            out[name]["real_triton_vs_fake_rel_l2"] = rel(results["real_triton"], results["fake"])
    return out


def int4_crossover(case: Case, settings: Settings) -> dict[str, Any]:
    """One W4A16 G128 Linear of the case's MLP shape (fc1) at growing row counts: the packed kernel
    against dequantize + GEMM (BF16 activations on CUDA, float32 on the CPU), and the fewest rows
    at which dequantizing is faster: the measurement behind kernels/int4.py's AUTO_PACKED_MAX_ROWS."""
    from .kernels.int4 import Int4WeightOnlyLinear

    fc1 = case.model.predictor.blocks[0].mlp.fc1
    device = settings.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(3)
    layers = {}
    for kernel in ("int4pack", "dequant"):
        layer = Int4WeightOnlyLinear(fc1.in_features, fc1.out_features, True, 4, 128, True, kernel=kernel)
        groups = layer.weight_scale.shape[1]
        layer.set_codes(torch.randint(-8, 8, (fc1.out_features, fc1.in_features), generator=gen),
                        torch.rand(fc1.out_features, groups, generator=gen) * 0.01 + 1e-3, None)
        layers[kernel] = layer.to(device)
    row_counts = (16, 64, 256) if settings.quick else (16, 64, 256, 1024, 4096, 16384, 65536)
    rows_out = []
    for rows in row_counts:
        x = torch.randn(rows, fc1.in_features, generator=gen).to(device=device, dtype=dtype)
        with torch.no_grad():
            seconds = {kernel: time_calls(lambda i, m=layer: m(x), device, settings.warmup, max(settings.repeats, 5))
                       ["median_seconds"] for kernel, layer in layers.items()}
        rows_out.append({"rows": rows, "int4pack_seconds": seconds["int4pack"], "dequant_seconds": seconds["dequant"]})
    faster = [r["rows"] for r in rows_out if r["dequant_seconds"] < r["int4pack_seconds"]]
    return {"in_features": fc1.in_features, "out_features": fc1.out_features, "dtype": str(dtype).removeprefix("torch."),
            "rows": rows_out, "dequant_faster_from_rows": min(faster) if faster else None}


def kernel_speedups(variants: dict[str, Any]) -> dict[str, Any]:
    def step(name: str) -> float | None:
        entry = variants.get(name) or {}
        return entry.get("seconds_per_episode_step")

    fp32 = step("fp32")
    bf16 = min((s for s in (step("bf16"), step("bf16_compiled")) if s), default=None)
    out = {}
    for name in variants:
        if name.startswith(("w", "fp8")) and step(name):
            out[name] = {"vs_fp32": fp32 / step(name) if fp32 else None, "vs_best_bf16": bf16 / step(name) if bf16 else None}
    return out


def protocol_estimates(model: nn.Module, entry: dict[str, Any]) -> dict[str, Any]:
    """Worst-case seconds (no episode ever succeeds) of the protocol a model of this kind runs
    (num_hist 1: Wall, else PushT), from the measured step times: episodes x iterations x (CEM
    steps x step time + 2 encodings of an observation). At the measured sample count."""
    protocol = "wall" if model.num_hist == 1 else "pusht"
    episodes, iterations, steps = PROTOCOLS[protocol]
    out: dict[str, Any] = {"protocol": protocol, "episode_steps": episodes * iterations * steps}
    for name, result in {**entry.get("variants", {}), "original": entry.get("original")}.items():
        if not result or "seconds_per_episode_step" not in result:
            continue
        encode = 0.0 if name == "original" else 2 * result.get("encode_seconds_per_episode", 0.0)
        out[f"{name}_seconds"] = episodes * iterations * (steps * result["seconds_per_episode_step"] + encode)
    return out


def run_protocol(env: str, settings: Settings, skip: bool, out_dir: Path) -> tuple[dict[str, Any], float]:
    """One full planning protocol with `run_plan` on the shipped model (exact FP32)."""
    from .configs import compose_config
    from .planning.runs import run_plan
    from .planning.engine import Engine
    from .planning.session import PlanningSession

    overrides = [f"model_name={env}", f"planner.skip_succeeded={str(skip).lower()}", "save_plots=false",
                 "n_plot_samples=0", f"output_dir={out_dir}", f"engine.device={settings.device}", "engine.precision=fp32",
                 *settings.protocol_overrides]
    if env == "pusht":
        overrides.append(f"dataset_path={settings.pusht_data}")
    cfg = compose_config(f"plan_{env}", overrides)
    session = PlanningSession(cfg)
    if settings.protocol_compile:
        old = session.engine
        session.engine = Engine(old.model, old.normalization, old.img_size, old.objective, old.device, old.precision,
                                old.chunk_episodes, compile=True)
    start = time.perf_counter()
    result, _ = run_plan(cfg, progress=False, session=session)
    return result, time.perf_counter() - start


def _planned_episode_steps(success_by_iter: list[list[int]], opt_steps: int, skip: bool) -> int:
    """CEM episode-steps the run planned: every episode every iteration, or (skipping) only those
    that had not succeeded before the iteration."""
    rows = np.asarray(success_by_iter)
    if not skip:
        return int(rows.size * opt_steps)
    before = np.vstack([np.zeros((1, rows.shape[1]), dtype=int), rows[:-1]])
    return int((before == 0).sum() * opt_steps)


def run_protocol_pair(env: str, settings: Settings, out: dict[str, Any], save: Callable[[], None],
                      both: bool = True) -> None:
    """The protocol with success-skipping on (and off) into `out`, saving after each run; checks
    that both record identical results (AssertionError otherwise)."""
    runs = {}
    with tempfile.TemporaryDirectory(prefix="wmquant-bench-") as tmp:
        for skip in ((True, False) if both else (True,)):
            result, seconds = run_protocol(env, settings, skip, Path(tmp) / f"skip_{skip}")
            opt_steps = int(result["config"]["planner"]["sub_planner"]["opt_steps"])
            runs[skip] = result
            out["skip_on" if skip else "skip_off"] = {
                "wall_seconds": seconds,
                "final_success_rate": result["final_success_rate"],
                "success_rate_by_iter": result["success_rate_by_iter"],
                "planned_episode_steps": _planned_episode_steps(result["success_by_iter"], opt_steps, skip),
                "n_evals": result["n_evals"],
                "max_iter": int(result["config"]["planner"]["max_iter"]),
            }
            save()
    if both:
        identical = runs[True]["success_by_iter"] == runs[False]["success_by_iter"]
        out["identical_success_by_iter"] = identical
        out["identical_latent_mse_by_iter"] = runs[True]["latent_mse_by_iter"] == runs[False]["latent_mse_by_iter"]
        out["speedup_skip_on_vs_off"] = out["skip_off"]["wall_seconds"] / out["skip_on"]["wall_seconds"]
        if not identical:
            raise AssertionError(f"{env}: success_by_iter differs with success-skipping on and off")


# --- targets and consistency ---------------------------------------------------------------------------

def _get(report: dict[str, Any], *path: str) -> Any:
    node: Any = report
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def evaluate_targets(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, each with the measured value, the threshold and whether it is met
    (None where the run did not measure it). Only meaningful on the GPU the targets name."""
    cem = _get(report, "sections", "cem") or {}
    h1 = (cem.get("dinowm_h1") or {}).get("variants", {})
    original = _get(cem, "dinowm_h1", "original", "seconds_per_episode_step") or ORIGINAL_REFERENCE_SECONDS["dinowm_h1"]
    kernels = _get(report, "sections", "kernels") or {}
    wall = _get(report, "sections", "protocol", "wall") or {}

    def best(*names: str, key: str = "seconds_per_episode_step", highest: bool = False) -> float | None:
        values = [h1[n][key] for n in names if isinstance(h1.get(n), dict) and h1[n].get(key) is not None]
        return (max if highest else min)(values) if values else None

    def target(value: float | None, threshold: float, at_least: bool) -> dict[str, Any]:
        ok = None if value is None else (value >= threshold if at_least else value <= threshold)
        return {"value": value, "threshold": threshold, "at_least": at_least, "met": ok}

    fp32_step = best("fp32", "fp32_compiled")
    bf16_step = best("bf16", "bf16_compiled")
    speedups = kernels.get("speedups") or {}

    def fastest(prefix: str) -> dict[str, Any]:
        return max((s for n, s in speedups.items() if n.startswith(prefix)), key=lambda s: s.get("vs_fp32") or 0,
                   default={})

    w8a8, fp8 = fastest("w8a8"), fastest("fp8_w8a8")
    w4 = _get(kernels, "variants", "w4a16_real", "weight_bytes", "stored_over_fp16")
    return {
        "fp32_seconds_per_episode_step_dinowm_h1": target(fp32_step, 0.37, False),
        "fp32_predictor_fraction_of_peak_dinowm_h1": target(best("fp32", "fp32_compiled", key="predictor_fraction_of_peak", highest=True), 0.80, True),
        "wall_protocol_skip_on_seconds": target(_get(wall, "skip_on", "wall_seconds"), 300.0, False),
        "wall_protocol_speedup_skip_on_vs_off": target(wall.get("speedup_skip_on_vs_off"), 5.0, True),
        "wall_protocol_identical_results": {"value": wall.get("identical_success_by_iter"), "met": wall.get("identical_success_by_iter")},
        "bf16_predictor_fraction_of_peak_dinowm_h1": target(best("bf16", "bf16_compiled", key="predictor_fraction_of_peak", highest=True), 0.50, True),
        "bf16_speedup_vs_original_fp32_dinowm_h1": target(original / bf16_step if bf16_step else None, 12.0, True),
        "w8a8_speedup_vs_fp32": target(w8a8.get("vs_fp32"), 5.0, True),
        "w8a8_speedup_vs_bf16": target(w8a8.get("vs_best_bf16"), 1.2, True),
        "fp8_w8a8_speedup_vs_bf16": target(fp8.get("vs_best_bf16"), 1.5, True),
        "w4a16_weight_bytes_over_fp16": target(w4, 0.30, False),
    }


#: How far above 1 a fraction of peak may read before it counts as inconsistent. The peak and the
#: rates are timed at different moments; on a shared CPU a peak timed while another process ran can
#: fall a few percent below a rate timed later (seen: 1.02 on the 2-core CI machine). A FLOP-count
#: error would be off by far more.
PEAK_TIMING_SLACK = 0.10


def check_report(report: dict[str, Any]) -> list[str]:
    """Internal consistency of a report: every fraction of peak in (0, 1 + PEAK_TIMING_SLACK], every
    time and rate > 0, no failed measurement. Returns the problems found (empty when consistent)."""
    problems: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "error" in node:
                problems.append(f"{path}: failed: {node['error']}")
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else key)
            return
        if isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")
            return
        if not isinstance(node, (int, float)) or isinstance(node, bool):
            return
        leaf = path.rsplit(".", 1)[-1].split("[")[0]
        if "fraction_of_peak" in leaf and not 0 < node <= 1 + PEAK_TIMING_SLACK:
            problems.append(f"{path} = {node} is not in (0, {1 + PEAK_TIMING_SLACK:g}]")
        elif (leaf.endswith("seconds") or "seconds_per" in leaf or leaf in ("tflops", "predictor_tflops", "gb_per_s")) \
                and not (node > 0 and math.isfinite(node)):
            problems.append(f"{path} = {node} is not a positive time or rate")

    walk(report.get("sections", {}), "sections")
    return problems


# --- printing ---------------------------------------------------------------------------------------

def _fmt(value: Any, unit: str = "", digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}{unit}"
    return f"{value}{unit}"


def format_report(report: dict[str, Any]) -> str:
    lines = [f"wmquant bench on {report['device']} (torch {report['torch']}){' [quick]' if report['quick'] else ''}"]
    peaks = _get(report, "sections", "peaks") or {}
    if peaks:
        rates = ", ".join(f"{k} {_fmt(v.get('tflops'), ' T')}" for k, v in peaks.items() if isinstance(v, dict) and "tflops" in v)
        lines.append(f"GEMM peaks (FLOP/s or OP/s): {rates}; copy {_fmt(_get(peaks, 'copy', 'gb_per_s'), ' GB/s')}")
    rows = [("model", "variant", "s/episode-step", "TFLOP/s", "of peak", "peak mem GB", "note")]

    def row(model: str, name: str, r: dict[str, Any]) -> None:
        if "error" in r:
            rows.append((model, name, "-", "-", "-", "-", r["error"][:60]))
            return
        mem = r.get("peak_memory_bytes")
        rows.append((model, name, _fmt(r.get("seconds_per_episode_step")), _fmt(r.get("predictor_tflops")),
                     _fmt(r.get("predictor_fraction_of_peak"), digits=2), _fmt(mem / 1e9 if mem else None),
                     r.get("compile_status", "") if r.get("compile_status") not in (None, "off") else ""))

    for key, entry in (_get(report, "sections", "cem") or {}).items():
        for name, r in entry.get("variants", {}).items():
            row(key, name, r)
        if entry.get("original"):
            row(key, "original (fp32)", entry["original"])
    kernels = _get(report, "sections", "kernels") or {}
    for name, r in (kernels.get("variants") or {}).items():
        if "reused_from" not in r:
            row(f"{kernels.get('model')} (kernels)", name, r)
    small = kernels.get("small_batch") or {}
    for name, r in (small.get("variants") or {}).items():
        row(f"{kernels.get('model')} (kernels, {small.get('samples')} samples)", name, r)
    if len(rows) > 1:
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
        lines += ["", *("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)]
    for name, r in (kernels.get("variants") or {}).items():
        if isinstance(r, dict) and r.get("weight_bytes"):
            wb = r["weight_bytes"]
            lines.append(f"{name}: weights {wb['stored_bytes']} B stored ({_fmt(wb['stored_over_fp16'], digits=3)}x FP16), "
                         f"{wb['resident_bytes']} B resident; kernels {', '.join(wb['kernels'])}")
    if kernels.get("agreement") and "error" not in kernels["agreement"]:
        for name, a in kernels["agreement"].items():
            fused = (f", fused Triton kernels vs fake {_fmt(a['real_triton_vs_fake_rel_l2'])}"
                     if "real_triton_vs_fake_rel_l2" in a else "")
            lines.append(f"{name}: real vs fake rel. L2 {_fmt(a['real_vs_fake_rel_l2'])}, fake vs float "
                         f"{_fmt(a['fake_vs_float_rel_l2'])}{fused}")
    crossover = kernels.get("int4_crossover") or {}
    if crossover.get("rows"):
        cells = ", ".join(f"{r['rows']}: {_fmt(r['int4pack_seconds'] * 1e3)} / {_fmt(r['dequant_seconds'] * 1e3)}"
                          for r in crossover["rows"])
        lines.append(f"W4A16 {crossover['in_features']} -> {crossover['out_features']} ({crossover['dtype']}), ms packed / "
                     f"dequantize by rows: {cells}; dequantize faster from {crossover['dequant_faster_from_rows']} rows")
    for env, p in (_get(report, "sections", "protocol") or {}).items():
        if not isinstance(p, dict) or "error" in p:
            lines.append(f"protocol {env}: failed: {p.get('error') if isinstance(p, dict) else p}")
            continue
        parts = [f"skip {k.split('_')[1]} {_fmt(v['wall_seconds'], ' s')} (success {_fmt(v['final_success_rate'], digits=2)})"
                 for k, v in p.items() if k.startswith("skip_")]
        extra = f"; speedup {_fmt(p.get('speedup_skip_on_vs_off'))}x, identical {p.get('identical_success_by_iter')}" if "speedup_skip_on_vs_off" in p else ""
        lines.append(f"protocol {env}: " + ", ".join(parts) + extra)
    targets = report.get("targets") or {}
    if any(t.get("value") is not None for t in targets.values()):
        lines.append("")
        lines.append("targets (meaningful on one H100):")
        for name, t in targets.items():
            if t.get("value") is None:
                continue
            verdict = {True: "met", False: "MISSED", None: "-"}[t.get("met")]
            bound = ("" if "threshold" not in t else (" >= " if t["at_least"] else " <= ") + _fmt(t["threshold"]))
            lines.append(f"  {name}: {_fmt(t['value'])}{bound} {verdict}")
    if report.get("consistency_problems"):
        lines += ["", "consistency problems:", *(f"  {p}" for p in report["consistency_problems"])]
    return "\n".join(lines)


def build_case_key_check(key: str) -> None:
    """ConfigError for a model key `build_case` would not know, before anything runs."""
    if key in ("wall", "pusht"):
        return
    for prefix in ("dinowm_h", "tiny_h"):
        if key.startswith(prefix) and key[len(prefix):].isdigit() and int(key[len(prefix):]) >= 1:
            return
    raise ConfigError(f"unknown bench model {key!r}; valid: wall, pusht, dinowm_h<N>, tiny_h<N> (N >= 1)")
