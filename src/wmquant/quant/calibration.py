"""The PTQ pipeline `calibrate_and_quantize`: the study's protocol (spec 4).

Validate everything; for each method of the recipe (one method, or several applied in order): if
it needs recorded inputs, run the calibration in float with recorders (`wmquant.quant.recorders`),
then let it transform the float model; `quantize_`; if there are static per-tensor activations, run
the calibration again in float with observers on; freeze the ranges; switch quantization on.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..errors import QuantizationError
from .api import (
    act_quantizers,
    active_targets,
    check_model_finite,
    freeze_,
    observe_activations,
    quant_summary,
    quantize_,
    set_quantization_,
)
from .config import QuantConfig
from .methods import get_method
from .methods.base import showing_progress
from .recipes import method_chain, recipe_name
from .recorders import (  # noqa: F401  (re-exported: the pipeline's inputs are part of its interface)
    BlockCall,
    BlockInputRecorder,
    CalibrationData,
    LinearInputRecorder,
    RolloutRecorder,
    layer_input_rows,
)
from .stats import validate_act_stats


RECORD_PASS = "record method inputs"
OBSERVE_PASS = "observe activation ranges"


def _chain_options(chain: list[str], method_options: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """Options per method: a single method takes `method_options` as they are; a chain takes
    `method_options.<method>.<key>` for each of its methods."""
    options = dict(method_options or {})
    if len(chain) == 1:
        return [options]
    unknown = sorted(set(options) - set(chain))
    if unknown:
        raise QuantizationError(f"method_options {unknown} name no method of the recipe {recipe_name(chain)}; "
                                f"give options per method, e.g. method_options.{chain[0]}.<key>=...")
    return [options.get(name) or {} for name in chain]


def check_composition(recipes: Sequence[Any], options: Sequence[Any] | None = None) -> None:
    """Refuse recipes whose methods cannot compose. Each method of a recipe works on the float
    model left by the previous one, so:
    * a method that reads `plan-act` statistics must come first (they describe the model before
      any transformation);
    * a method that settles the weights on its grid (GPTQ, OmniQuant) or chooses the widths
      (mixed) must come last (a later method would move them off that grid, or ignore the widths);
    * channel-scale folding cannot follow a rotation (with `options`, the methods' parsed options,
      a method whose folding is optional is judged by them);
    * a method appears once."""
    names = [r.name for r in recipes]
    folds = ([r.folds_scales(o) for r, o in zip(recipes, options)] if options is not None
             else [r.folds_channel_scales for r in recipes])
    if len(set(names)) != len(names):
        raise QuantizationError(f"recipe {recipe_name(names)} names a method twice")
    for position, recipe in enumerate(recipes):
        if recipe.needs_act_stats and position > 0:
            raise QuantizationError(
                f"recipe {recipe_name(names)}: {recipe.name} reads plan-act statistics of the untransformed model, "
                "so it must come first")
        if folds[position] and any(r.rotates_inputs for r in recipes[:position]):
            raise QuantizationError(
                f"recipe {recipe_name(names)}: {recipe.name} folds per-channel scales into a norm and a Linear, "
                "which a rotation before it has made inexact; put it before the rotation")
        if recipe.finalizes_weights and position < len(recipes) - 1:
            raise QuantizationError(
                f"recipe {recipe_name(names)}: {recipe.name} settles the weights on its quantization grid, so no "
                f"method can follow it ({names[position + 1]} does)")
        if recipe.chooses_widths and position < len(recipes) - 1:
            raise QuantizationError(
                f"recipe {recipe_name(names)}: {recipe.name} chooses each layer's bit widths, which a later method "
                f"would not use, so no method can follow it ({names[position + 1]} does)")


def plan_recipe(method: str | Sequence[str], qconfig: QuantConfig,
                method_options: Mapping[str, Any] | None = None) -> tuple[list[Any], list[Any]]:
    """(method instances, their parsed options) of a recipe, after every check that needs no model:
    registered names, composition, options, and each method's acceptance of the config."""
    if not isinstance(qconfig, QuantConfig):
        raise QuantizationError(f"qconfig must be a QuantConfig, got {type(qconfig).__name__}")
    chain = method_chain(method)
    recipes = [get_method(name) for name in chain]
    options = [recipe.make_options(raw) for recipe, raw in zip(recipes, _chain_options(chain, method_options))]
    check_composition(recipes, options)
    for recipe, opts in zip(recipes, options):
        recipe.check_config(qconfig, opts)
    return recipes, options


def needs_act_stats(method: str | Sequence[str], qconfig: QuantConfig, method_options: Mapping[str, Any] | None = None) -> bool:
    recipes, options = plan_recipe(method, qconfig, method_options)
    return any(recipe.requirements(opts).act_stats for recipe, opts in zip(recipes, options))


def calibrate_and_quantize(
    model: nn.Module,
    method: str | Sequence[str],
    qconfig: QuantConfig,
    run_calibration: Callable[[], None],
    act_stats: Mapping[str, torch.Tensor] | None = None,
    method_options: Mapping[str, Any] | None = None,
    on_passes: Callable[[list[str]], None] | None = None,
    progress: bool = False,
) -> dict:
    """Quantize `model` in place with a registered method, or a recipe of several applied in
    order; returns a report for result.json.

    method: a registered name, or a list of them (or "a+b"): each method transforms the float
    model that the previous one left, with inputs recorded anew when it needs them, and the
    weight quantization parameters of a later method replace an earlier one's for the same layer.
    method_options: the method's options; for a recipe, {method name: its options}.
    run_calibration: runs the model on the calibration data (FP MPC-CEM planning on the
    calibration episodes for quant_iter iterations). It is called zero or more times, always
    with the model computing in float. Everything is validated before it is first called.
    on_passes: told the purposes of the calibration passes that will run, once everything is
    validated and before the first (so a caller can say how long calibration will take).
    progress: show the methods' own progress bars (rollout's epochs, mixed's replays, OmniQuant's blocks).
    """
    chain = method_chain(method)
    recipes, options = plan_recipe(chain, qconfig, method_options)
    needs = [recipe.requirements(opts) for recipe, opts in zip(recipes, options)]
    for recipe, need in zip(recipes, needs):
        if need.act_stats and act_stats is None:
            raise QuantizationError(
                f"method {recipe.name!r} needs per-channel activation statistics; make them with `wmquant plan-act` "
                "and pass the file"
            )
    stats = validate_act_stats(act_stats) if act_stats is not None else None
    targets = active_targets(model, qconfig)
    check_model_finite(model)
    for recipe, opts in zip(recipes, options):
        recipe.check_model(model, qconfig, opts, stats)

    layer_names = [t.name for t in targets if not t.is_tap and t.scheme.quantizes_weights]
    recordings = []
    for recipe, opts, need in zip(recipes, options, needs):
        block_parts = recipe.block_parts(model, qconfig) if need.block_inputs else ()
        recordings.append((block_parts, layer_names if need.layer_inputs else [], need.rollouts))
    observe_ranges = any(t.scheme.quantizes_activations and t.scheme.a_granularity == "per_tensor" for t in targets)
    if on_passes is not None:
        on_passes([RECORD_PASS for parts, layers, rollouts in recordings if parts or layers or rollouts]
                  + ([OBSERVE_PASS] * observe_ranges))

    report: dict[str, Any] = {"calibration_passes": []}
    weight_qparams: dict[str, Any] = {}
    act_clips: dict[str, Any] = {}
    act_observer = None
    method_reports: dict[str, Any] = {}
    superseded: dict[str, list[str]] = {}
    layer_schemes: dict[str, Any] = {}
    method_seconds: dict[str, float] = {}
    for recipe, opts, (block_parts, names, rollouts) in zip(recipes, options, recordings):
        calib = CalibrationData(act_stats=stats)
        if block_parts or names or rollouts:
            started = time.perf_counter()
            calib.block_inputs, calib.layer_grams, (calib.rollouts, calib.encoder_frames), record = _record_inputs(
                model, block_parts, names, rollouts, run_calibration, opts)
            report["calibration_passes"].append({**record, "seconds": time.perf_counter() - started,
                                                 **({"method": recipe.name} if len(recipes) > 1 else {})})
        started = time.perf_counter()
        with showing_progress(progress):
            result = recipe.transform(model, qconfig, calib, opts)
        # the method's own computation, apart from the planning passes that record its inputs
        method_seconds[recipe.name] = time.perf_counter() - started
        layer_schemes.update(result.layer_schemes)
        for name in result.weight_qparams:
            if name in weight_qparams:
                superseded.setdefault(recipe.name, []).append(name)
        weight_qparams.update(result.weight_qparams)
        act_clips.update(result.act_clips)
        act_observer = result.act_observer or act_observer
        method_reports[recipe.name] = result.report

    quantize_(model, qconfig, weight_qparams=weight_qparams, act_observer=act_observer, layer_schemes=layer_schemes,
              act_clips=act_clips)

    static = [a for a in act_quantizers(model) if a.needs_calibration]
    if static:
        started = time.perf_counter()
        with observe_activations(model):
            run_calibration()
        freeze_(model)
        report["calibration_passes"].append({
            "purpose": OBSERVE_PASS,
            "seconds": time.perf_counter() - started,
            "observed_calls_min": min(a.calls_observed for a in static),
            "static_activation_quantizers": len(static),
        })
    set_quantization_(model, True)

    single = len(recipes) == 1
    report.update({
        "method": recipe_name(chain),
        "method_options": (dataclasses.asdict(options[0]) if single
                           else {r.name: dataclasses.asdict(o) for r, o in zip(recipes, options)}),
        "quant_config": qconfig.to_dict(),
        "summary": quant_summary(model),
        "method_report": method_reports[chain[0]] if single else method_reports,
        "method_seconds": method_seconds,
    })
    if superseded:
        # e.g. AWQ's clip ratios, replaced by GPTQ's grid for the same layers
        report["superseded_weight_qparams"] = superseded
    return report


def _record_inputs(model: nn.Module, block_parts: Sequence[str], layer_names: list[str], rollouts: bool,
                   run_calibration: Callable[[], None], options: Any):
    """One calibration pass with recorders: (block inputs, layer Gram matrices, (rollouts, encoded
    frames), the pass's record)."""
    block_recorder = BlockInputRecorder(model, block_parts, max_samples=getattr(options, "n_samples", 128),
                                        seed=getattr(options, "seed", 0))
    layer_recorder = LinearInputRecorder(model, layer_names)
    rollout_recorder = (RolloutRecorder(model, getattr(options, "n_sequences", 256), seed=getattr(options, "seed", 0))
                        if rollouts else None)
    try:
        run_calibration()
    finally:
        block_recorder.remove()
        layer_recorder.remove()
        if rollout_recorder is not None:
            rollout_recorder.remove()
    block_recorder.check_nonempty()
    layer_recorder.check_nonempty()
    record = {
        "purpose": RECORD_PASS,
        "block_input_sequences": {p: block_recorder.num_sequences(p) for p in block_parts},
        "block_input_calls": {p: block_recorder.reservoirs[p].calls for p in block_parts},
        "layer_input_rows": dict(layer_recorder.rows),
    }
    recorded_rollouts, frames = [], None
    if rollout_recorder is not None:
        rollout_recorder.check_nonempty()
        recorded_rollouts, frames = rollout_recorder.groups, rollout_recorder.frames()
        record["rollout_sequences"] = sum(group.num_sequences for group in recorded_rollouts)
        record["rollout_groups_with_observations"] = sum(group.observations is not None for group in recorded_rollouts)
        record["encoder_frames"] = 0 if frames is None else int(frames["visual"].shape[0])
    return (block_recorder.all_inputs(), {n: (layer_recorder.grams[n], layer_recorder.rows[n]) for n in layer_names},
            (recorded_rollouts, frames), record)
