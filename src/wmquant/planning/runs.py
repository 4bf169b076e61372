"""Planning runs: the original study's scripts (`plan.py`, `plan_act.py`, `plan_quant_*.py`) as one
pipeline with a registered PTQ recipe, plus the planning ceiling. `wmquant.commands.plan` gives
them their command line; the study runner calls them directly.

Order of work in a quantized run: validate every setting, load the FP model, FP-plan `quant_iter` MPC
iterations on the calibration episodes (seeds seed*n+2, training split) while recorders and
observers watch, apply the recipe, switch quantization on, then plan on the evaluation episodes
(seeds seed*n+1) exactly as `plan` does.
"""

from __future__ import annotations

import copy
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from ..configs import compose_config, env_from_overrides
from ..errors import ConfigError
from ..hardware import describe_device
from ..quant import fused_fake_quant
from .results import (build_result, discards_empty_run_dir, new_run_dir, progress_writer, write_figures, write_logs,
                      write_open_loop, write_result)
from .checkpoint import CHECKPOINT_FILE, fingerprint
from .session import PlanningSession

#: Config keys that name where or how a run is shown, not what it measures.
RUN_LOCAL_KEYS = ("output_dir", "save_plots", "save_video", "resume", "n_plot_samples")

A_GRANULARITY = {"layer_wise": "per_tensor", "token_wise": "per_token"}


def compose_plan_config(config_name: str | None, overrides: Sequence[str]) -> DictConfig:
    """plan_<env>.yaml (or `config_name`) with the overrides; `method_options` is an open mapping of
    method hyper-parameters, so `method_options.alpha=0.8` adds a key."""
    if config_name is None:
        config_name = f"plan_{env_from_overrides(overrides)}"
    overrides = [f"+{o}" if o.startswith("method_options.") else o for o in overrides]
    return compose_config(config_name, overrides)


def _flag(cfg: DictConfig, key: str, default: bool = False) -> bool:
    value = cfg.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be true or false")
    return value


# --- plan -----------------------------------------------------------------------------------------
def run_checkpoint(cfg: DictConfig, run_dir: Path, model, episodes) -> tuple[Path | None, str]:
    """(run_dir/mpc_state.npz, fingerprint) when cfg.resume, else (None, ""). What makes the run
    this run: a checkpoint of anything else (another config, other weights, a quantization that came
    out differently, other episodes) is never continued."""
    if not cfg.resume:
        return None, ""
    identity = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in RUN_LOCAL_KEYS}
    return run_dir / CHECKPOINT_FILE, fingerprint(identity, model, episodes.seeds)


def resumed_record(trace) -> dict[str, Any]:
    """result.json's `resumed` entry for a run that continued an interrupted one."""
    if trace.resumed_from is None:
        return {}
    return {"resumed": {"from_iteration": trace.resumed_from, "earlier_planning_seconds": trace.earlier_seconds}}


def evaluate_and_write(cfg: DictConfig, session: PlanningSession, run_dir: Path, start: float, progress: bool,
                       method: str = "fp", quant: dict | None = None, calibration=None) -> dict:
    """Plan on the evaluation episodes and write logs.json, the figures and (last) result.json."""
    episodes, env = session.episodes("evaluation")
    checkpoint, run_fingerprint = run_checkpoint(cfg, run_dir, session.model, episodes)
    try:
        trace = session.plan(episodes, env, progress=progress, plot_episodes=int(cfg.n_plot_samples),
                             on_iteration=progress_writer(run_dir, start),
                             checkpoint=checkpoint, run_fingerprint=run_fingerprint)
    finally:
        env.close()
    extra = {"device": describe_device(session.engine.device), **resumed_record(trace)}
    if quant is not None:
        extra["fake_quant_kernels"] = fused_fake_quant.kernels_on(session.engine.device)
    result = build_result(cfg, trace, episodes, time.perf_counter() - start + trace.earlier_seconds, method=method,
                          quant=quant, calibration=calibration, run_id=run_dir.name, extra=extra)
    write_logs(run_dir, trace)
    if cfg.save_plots:
        write_figures(run_dir, trace, session.model, f"{cfg.model_name} {method} {cfg.tag}")
    write_open_loop(run_dir, session, episodes, int(cfg.seed))
    write_result(run_dir, result)
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)  # the result is the record now
    return result


@discards_empty_run_dir
def run_plan(cfg: DictConfig, progress: bool = True, session: PlanningSession | None = None) -> tuple[dict, Path]:
    session = session or PlanningSession(cfg)
    run_dir = new_run_dir(cfg)
    return evaluate_and_write(cfg, session, run_dir, time.perf_counter(), progress), run_dir


# --- plan-act -------------------------------------------------------------------------------------
def act_stats_path(cfg: DictConfig) -> Path:
    """act_scales_dir/wm_act_scales_<model>_<scale_tag>.safetensors (QuantWM: /cache/scale/..._<env>_<tag>.pt);
    keyed by model rather than env, because statistics belong to one model's weights."""
    model = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(cfg.model_name).strip("/"))
    return Path(str(cfg.act_scales_dir)) / f"wm_act_scales_{model}_{cfg.scale_tag}.safetensors"


def run_plan_act(cfg: DictConfig, progress: bool = True, session: PlanningSession | None = None) -> Path:
    from ..quant.stats import ActStatsRecorder, save_act_stats

    if not cfg.sta_scale:
        raise ConfigError(
            "sta_scale=false would gather statistics on the evaluation episodes; wmquant gathers them on the "
            "calibration episodes only (sta_scale=true)"
        )
    session = session or PlanningSession(cfg)
    episodes, env = session.episodes("calibration")
    try:
        with ActStatsRecorder(session.model) as recorder:
            session.plan(episodes, env, skip_succeeded=False, progress=progress, desc="plan-act")
    finally:
        env.close()
    path = act_stats_path(cfg)
    save_act_stats(path, recorder.stats())
    return path


# --- quant ----------------------------------------------------------------------------------------
def resolve_method(cfg: DictConfig) -> str:
    """The recipe a config names: `method=awq`, `method=[smoothquant,gptq]` (applied in order) or
    `method=smoothquant+gptq`; with `method=fp`, the seed README's `w_quant_method` (through the
    compatibility table of wmquant.quant.legacy). Returns the recipe's name ("awq", "smoothquant+gptq")."""
    from ..quant.legacy import W_QUANT_METHOD_TO_METHOD
    from ..quant.recipes import check_recipe

    raw = cfg.method
    method = [str(m) for m in raw] if OmegaConf.is_list(raw) else str(raw)
    if method == "fp":
        method = W_QUANT_METHOD_TO_METHOD.get(str(cfg.w_quant_method), "")
        if not method:
            raise ConfigError(
                f"unknown w_quant_method {cfg.w_quant_method!r}; valid: {', '.join(W_QUANT_METHOD_TO_METHOD)}"
            )
    return check_recipe(method)


def build_quant_config(cfg: DictConfig, method: str):
    """The seed README's keys -> a QuantConfig (validated)."""
    from ..quant.config import QuantConfig, QuantScheme
    from ..quant.legacy import A_QUANT_METHOD_TO_OBSERVER

    granularity = A_GRANULARITY.get(str(cfg.calib_mode_a))
    if granularity is None:
        raise ConfigError(f"unknown calib_mode_a {cfg.calib_mode_a!r}; valid: {', '.join(A_GRANULARITY)}")
    group = cfg.W_GROUP_SIZE
    if isinstance(group, str):
        try:
            group = int(group)
        except ValueError as err:
            raise ConfigError(f"W_GROUP_SIZE must be -1 (per-channel) or a positive integer, got {group!r}") from err
    if isinstance(group, bool) or not isinstance(group, int) or (group != -1 and group < 1):
        raise ConfigError(f"W_GROUP_SIZE must be -1 (per-channel) or a positive integer, got {group!r}")
    w_observer = "omse" if "omse" in method.split("+") or cfg.w_quant_method == "omse" else "minmax"
    a_observer = A_QUANT_METHOD_TO_OBSERVER.get(str(cfg.a_quant_method))
    if a_observer is None:
        raise ConfigError(f"unknown a_quant_method {cfg.a_quant_method!r}; valid: {', '.join(A_QUANT_METHOD_TO_OBSERVER)}")

    def scheme(on: bool, part: str) -> QuantScheme:
        w_bits, a_bits = (bit_key(cfg, f"{part}_{kind}bit") for kind in ("w", "a"))
        if not on:
            return QuantScheme()
        return QuantScheme(
            w_bits=w_bits, a_bits=a_bits, w_group_size=None if group == -1 else int(group),
            a_granularity=granularity, w_observer=w_observer, a_observer=a_observer,
            a_include_zero=_flag(cfg, "a_include_zero", default=True),
            w_format=str(cfg.get("w_format", "int")), a_format=str(cfg.get("a_format", "int")),
        )

    targets = cfg.quant_targets
    targets = [str(targets)] if isinstance(targets, str) else [str(t) for t in targets]
    return QuantConfig(
        encoder=scheme(bool(cfg.quant_encoder), "encoder"),
        predictor=scheme(bool(cfg.quant), "predictor"),
        targets=tuple(targets),
    )


def bit_key(cfg: DictConfig, key: str) -> int:
    """A bit-width key (`predictor_wbit` ...) as an int: 2..8, or 16 for off. A string or a fraction
    is refused, not rounded."""
    from ..errors import QuantizationError
    from ..quant.qmath import check_bits

    value = cfg.get(key)
    try:
        return check_bits(value, key)
    except QuantizationError:
        raise ConfigError(f"{key}={value!r} is not a valid bit width; use an integer 2..8, or 16 for no quantization") from None


def format_seconds(seconds: float) -> str:
    """A duration as a person reads it: 45 s, 3.2 min, 1.5 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def calibration_forecast(session: PlanningSession, episodes, quant_iter: int, budget: dict[str, int],
                         passes: list[str]) -> str:
    """One line: the calibration passes that will run, and the time they are expected to take."""
    if not passes:
        return "calibration: no planning pass needed (weights only, data-free method)"
    per_pass = session.estimate_plan_seconds(episodes, quant_iter, budget)
    expected = ("" if per_pass is None else
                f"; their planning is expected to take about {format_seconds(per_pass * len(passes))}, the "
                "methods' own computation comes on top")
    return f"calibration: {len(passes)} planning pass(es) ({', '.join(passes)}){expected}"


@discards_empty_run_dir
def run_quant(cfg: DictConfig, progress: bool = True, session: PlanningSession | None = None) -> tuple[dict, Path]:
    from ..kernels.real import apply_engine_backend_, check_engine_backend, check_int8_kernel, check_real_config
    from ..quant.calibration import calibrate_and_quantize, needs_act_stats
    from ..quant.stats import load_act_stats

    # Everything that can be wrong with the request is checked before any planning starts.
    if not cfg.quant and not cfg.quant_encoder:
        raise ConfigError("nothing to quantize: quant=false and quant_encoder=false; set quant=true (predictor) "
                          "and/or quant_encoder=true (encoder)")
    method = resolve_method(cfg)
    qconfig = build_quant_config(cfg, method)
    options = OmegaConf.to_container(cfg.method_options, resolve=True) if cfg.method_options else {}
    act_stats = load_act_stats(act_stats_path(cfg)) if needs_act_stats(method, qconfig, options) else None
    backend = str(cfg.engine.backend)
    check_engine_backend(backend)
    int8_kernel = check_int8_kernel(str(cfg.engine.get("int8_kernel", "torch")))
    mechanisms = _flag(cfg, "mechanisms")

    session = session or PlanningSession(cfg)
    if backend == "real":
        check_real_config(session.model, qconfig)  # refuse schemes the kernels cannot run, before calibrating
        check_int8_kernel(int8_kernel, session.device)
    float_model = copy.deepcopy(session.model) if mechanisms else None  # the reference of the measurements
    run_dir = new_run_dir(cfg)
    start = time.perf_counter()
    calib_episodes, calib_env = session.episodes("calibration")
    budget = session.calibration_budget()
    if progress:
        print(f"calibration: {len(calib_episodes)} episodes (seeds {int(cfg.seed)}n+2, training split), "
              f"{int(cfg.quant_iter)} MPC iterations each, CEM {budget['num_samples']} samples / top {budget['topk']} / "
              f"{budget['opt_steps']} steps (keys n_calib, quant_iter, calib_planner.*)", file=sys.stderr, flush=True)

    def run_calibration() -> None:
        # All calibration episodes are planned for every one of the quant_iter iterations (no
        # skipping), so calibration always sees data even if every episode succeeds early.
        session.plan(calib_episodes, calib_env, max_iter=int(cfg.quant_iter), skip_succeeded=False,
                     progress=progress, desc="calibration", budget=budget)

    def announce_passes(passes: list[str]) -> None:
        if progress:
            print(calibration_forecast(session, calib_episodes, int(cfg.quant_iter), budget, passes),
                  file=sys.stderr, flush=True)

    try:
        report = calibrate_and_quantize(
            session.model, method, qconfig, run_calibration, act_stats=act_stats, method_options=options,
            on_passes=announce_passes, progress=progress,
        )
    finally:
        calib_env.close()
    apply_engine_backend_(session.model, backend, int8_kernel)  # engine.backend=real: swap in the real kernels
    calib_seconds = time.perf_counter() - start
    measured = None
    if float_model is not None:
        from ..diagnose.mechanisms import measure_mechanisms

        if progress:
            print("mechanisms: encoder damage, linear probes and cross-evaluated first plans (mechanisms=true)",
                  file=sys.stderr, flush=True)
        measured = measure_mechanisms(session, float_model)
        del float_model
    quant = {
        "method": method,
        "quant_encoder": bool(cfg.quant_encoder),
        "quant_predictor": bool(cfg.quant),
        **qconfig.to_dict(),
        "avg_bits_per_weight": {part: entry.get("avg_bits_per_weight") for part, entry in report["summary"].items()},
        "summary": report["summary"],
        "options": report.get("method_options", options),
        "method_report": report.get("method_report"),
        # a recipe's later method replacing an earlier one's weight grid (e.g. GPTQ after AWQ's clipping)
        **({"superseded_weight_qparams": report["superseded_weight_qparams"]}
           if "superseded_weight_qparams" in report else {}),
        "calibration_seconds": calib_seconds,
        # of which: each recording / observing planning pass, and each method's own computation
        "calibration_passes": report["calibration_passes"],
        "method_seconds": report["method_seconds"],
        "quant_iter": int(cfg.quant_iter),
        "calibration": {"episodes": len(calib_episodes), "mpc_iterations": int(cfg.quant_iter),
                        "seed_offset": session.calibration_replicate(), **budget},
        "backend": backend,
        **({"int8_kernel": int8_kernel} if backend == "real" else {}),
    }
    if measured is not None:
        quant["mechanisms"] = measured
    result = evaluate_and_write(cfg, session, run_dir, start, progress, method, quant, calib_episodes)
    return result, run_dir


def run_from_config(cfg: DictConfig, progress: bool = False) -> tuple[dict[str, Any], Path]:
    """FP or quantized planning, whichever the config asks for (used by the study runner)."""
    if str(cfg.method) == "fp" and not cfg.quant and not cfg.quant_encoder:
        return run_plan(cfg, progress=progress)
    return run_quant(cfg, progress=progress)


# --- ceiling ----------------------------------------------------------------------------------------
@discards_empty_run_dir
def run_ceiling_plan(cfg: DictConfig, progress: bool = True, session: PlanningSession | None = None) -> tuple[dict, Path]:
    """MPC-CEM with the true env dynamics and a Euclidean state cost, on the evaluation episodes."""
    from .cem import CEMConfig
    from .ceiling import CeilingConfig, run_ceiling

    session = session or PlanningSession(cfg)
    run_dir = new_run_dir(cfg)
    start = time.perf_counter()
    episodes, env = session.episodes("evaluation")
    sub = cfg.planner.sub_planner
    config = CeilingConfig(
        cem=CEMConfig(horizon=int(cfg.goal_H), topk=int(sub.topk), num_samples=int(sub.num_samples),
                      var_scale=float(sub.var_scale), opt_steps=int(sub.opt_steps)),
        n_taken_actions=int(cfg.goal_H), max_iter=int(cfg.planner.max_iter), frameskip=session.bundle.frameskip,
    )
    checkpoint, run_fingerprint = run_checkpoint(cfg, run_dir, None, episodes)
    try:
        trace = run_ceiling(str(cfg.env), env, episodes, session.bundle.normalization, config, int(cfg.seed), progress,
                            on_iteration=progress_writer(run_dir, start), checkpoint=checkpoint,
                            run_fingerprint=run_fingerprint)
    finally:
        env.close()
    trace.latent_mse_by_iter = [float("nan")] * len(trace.success_by_iter)
    trace.planning_loss_by_iter = [float("nan")] * len(trace.success_by_iter)
    result = build_result(cfg, trace, episodes, time.perf_counter() - start + trace.earlier_seconds, method="ceiling",
                          run_id=run_dir.name, extra={"note": "true env dynamics + Euclidean state cost (no world model)",
                                                      **resumed_record(trace)})
    if cfg.save_plots:
        write_figures(run_dir, trace, None, f"{cfg.env} planning ceiling")
    write_result(run_dir, result)
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    return result, run_dir
