"""`wmquant export`: a real quantized checkpoint, loadable without the float weights it replaces.

A checkpoint directory (written atomically) holds

* `model.safetensors`: the state dict of the model after `to_real_backend_`. A quantized Linear
  `name` contributes `name.qweight` (int8 codes, or uint8 with two 4-bit codes per byte),
  `name.weight_scale` (float32), `name.weight_zero_point` (uint8, asymmetric 4-bit only),
  `name.input_scale` / `name.input_zero_point` (static activation range only) and `name.bias`;
  it has no `name.weight`. Everything not quantized keeps its float tensors.
* `config.yaml`: the source model's config (`model:` and its other sections, e.g. `planning:`)
  plus a `quantization:` section: the format tag, the QuantConfig, one spec per real layer, and
  the weight bytes.

`load_real_quantized(dir)` rebuilds the model with real layers in place of the quantized Linears
(built on the meta device, so no float weight of theirs is ever allocated) and loads the file.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import yaml
from torch import nn

from ..errors import CheckpointError, ConfigError, QuantizationError
from ..io import atomic_directory
from ..models.checkpoint import (CHECKPOINT_VERSION, CONFIG_FILE, WEIGHTS_FILE, build_world_model,
                                resolve_model_config, yaml_ready)
from ..models.loading import assign_exact, build_for_loading, first_line, read_yaml_mapping
from ..quant.api import act_quantizers, quantized_layers
from .real import (RealLinearSpec, build_real_linear, check_real_config, real_linears, real_weight_bytes, spec_of,
                   to_real_backend_)

EXPORT_FORMAT = "wmquant.real/1"


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _real_copy(model: nn.Module) -> nn.Module:
    """`model` itself if it already runs real kernels only, else a converted copy (the caller's
    fake-quant model is left as it was)."""
    if quantized_layers(model) or act_quantizers(model):
        return to_real_backend_(copy.deepcopy(model))
    if not real_linears(model):
        raise QuantizationError("the model has no quantized layer; quantize it before exporting")
    return model


def _skeleton(model_cfg: Mapping[str, Any], specs: Mapping[str, RealLinearSpec], int4_kernel: str) -> nn.Module:
    """The world model of `model_cfg` with an empty real layer at every name of `specs`."""
    model = build_world_model(model_cfg, load_encoder_weights=False)
    for name, spec in specs.items():
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"quantized layer {name!r} is not a module of the model config") from None
        if not isinstance(old, nn.Linear) or (old.in_features, old.out_features) != (spec.in_features, spec.out_features):
            raise CheckpointError(
                f"quantized layer {name!r} ({spec.in_features} -> {spec.out_features}) does not match the model's "
                f"{type(old).__name__}"
            )
        _set_submodule(model, name, build_real_linear(spec, int4_kernel=int4_kernel))
    return model


def export_quantized(
    model: nn.Module,
    qconfig: Any,
    out_dir: str | os.PathLike,
    model_document: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a real quantized checkpoint of `model` to `out_dir`; returns its `quantization` section.

    model: a frozen fake-quantized model (converted on a copy) or one already converted with
    `to_real_backend_`. qconfig: the QuantConfig (or its dict) it was quantized with, recorded as
    is. model_document: the source checkpoint's config.yaml as a dict (`load_world_model`'s
    second value); its `model:` section must describe `model`. extra: more config.yaml sections.
    """
    if not isinstance(model_document, Mapping) or not isinstance(model_document.get("model"), Mapping):
        raise ConfigError("model_document needs a 'model' section (the config.yaml of the source checkpoint)")
    real_model = _real_copy(model)
    specs = {name: spec_of(layer) for name, layer in real_linears(real_model)}
    resolved = resolve_model_config(model_document["model"])
    with torch.device("meta"):
        skeleton = _skeleton(resolved, specs, "dequant")
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in real_model.state_dict().items()}
    if expected != actual:
        differing = sorted(set(expected.items()) ^ set(actual.items()))[:5]
        raise ConfigError(f"the model document does not describe this model (tensors differ: {differing})")
    qdict = qconfig.to_dict() if hasattr(qconfig, "to_dict") else qconfig
    section = {
        "format": EXPORT_FORMAT,
        "qconfig": qdict,
        "layers": {name: spec.to_dict() for name, spec in specs.items()},
        "weight_bytes": {k: v for k, v in real_weight_bytes(real_model).items() if k not in ("kernels", "notes")},
    }
    document: dict[str, Any] = {"wmquant_checkpoint_version": CHECKPOINT_VERSION, "model": resolved}
    for key, value in model_document.items():
        if key not in ("wmquant_checkpoint_version", "model", "quantization"):
            document[key] = value
    for key, value in (extra or {}).items():
        if key in document or key == "quantization":
            raise ConfigError(f"extra config section {key!r} is reserved; choose another name")
        document[key] = value
    document["quantization"] = section
    from safetensors.torch import save_file

    # clone(): safetensors refuses tensors that share storage (and views of padded kernel buffers).
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in real_model.state_dict().items()}
    with atomic_directory(Path(out_dir), overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "wmquant_export": EXPORT_FORMAT})
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(yaml_ready(document), sort_keys=False))
    return section


def load_real_quantized(
    path: str | os.PathLike, device: str | torch.device = "cpu", int4_kernel: str = "auto"
) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode with real layers, config.yaml as a dict) from an exported directory.

    Raises CheckpointError for a directory that is not a complete wmquant real export.
    """
    from safetensors import safe_open

    directory = Path(path)
    document = read_yaml_mapping(directory / CONFIG_FILE, f"an exported checkpoint holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    section = document.get("quantization")
    if not isinstance(section, dict) or section.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{directory}: not a real quantized export (config.yaml has no quantization.format {EXPORT_FORMAT})")
    if not isinstance(document.get("model"), dict) or not isinstance(section.get("layers"), dict):
        raise CheckpointError(f"{directory / CONFIG_FILE}: missing 'model' or 'quantization.layers'")
    try:
        specs = {name: RealLinearSpec.from_dict(spec) for name, spec in section["layers"].items()}
    except (QuantizationError, TypeError) as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE}: bad layer spec ({first_line(exc)})") from exc
    model = build_for_loading(lambda: _skeleton(document["model"], specs, int4_kernel), device)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing weights file")
    try:
        with safe_open(str(weights), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:  # safetensors raises its own error type for corrupt or truncated files
        raise CheckpointError(f"{weights}: not a readable safetensors file ({first_line(exc)})") from exc
    assign_exact(model, tensors, str(weights), "quantized weights")
    for _, layer in real_linears(model):
        layer.prepare()
    return model.eval(), document


# --- CLI --------------------------------------------------------------------------------------------

#: A small calibration budget (the demo's); any of these keys given in --config wins.
CALIBRATION_BUDGET = {
    "n_evals": "8", "quant_iter": "1", "planner.sub_planner.num_samples": "64",
    "planner.sub_planner.topk": "8", "planner.sub_planner.opt_steps": "4",
}


def _calibrated_model(model_name: str, method_overrides: Sequence[str], device: str):
    """Load `model_name`, calibrate and fake-quantize it as `wmquant quant` does (calibration
    episodes only). Returns (session, qconfig, method, report, composed config)."""
    from omegaconf import OmegaConf

    from ..configs import compose_config
    from ..planning.runs import act_stats_path, build_quant_config, resolve_method
    from ..planning.session import PlanningSession, load_planning_model
    from ..quant.calibration import calibrate_and_quantize, needs_act_stats
    from ..quant.stats import load_act_stats

    bundle = load_planning_model(OmegaConf.create({"model_name": model_name, "ckpt_base_path": None}))
    given = {o.lstrip("+~").split("=", 1)[0] for o in method_overrides}
    overrides = [f"model_name={model_name}", f"engine.device={device}", "save_plots=false"]
    overrides += [f"{k}={v}" for k, v in CALIBRATION_BUDGET.items() if k not in given]
    overrides += [f"{k}=true" for k in ("quant", "quant_encoder") if k not in given]
    overrides += [f"+{o}" if o.startswith("method_options.") else o for o in method_overrides]
    cfg = compose_config(f"plan_{bundle.env}", overrides)
    method = resolve_method(cfg)
    qconfig = build_quant_config(cfg, method)
    options = OmegaConf.to_container(cfg.method_options, resolve=True) if cfg.method_options else {}
    stats_needed = needs_act_stats(method, qconfig, options)  # checks the recipe and its options
    check_real_config(bundle.model, qconfig)  # refuse before calibrating, not after
    act_stats = load_act_stats(act_stats_path(cfg)) if stats_needed else None
    session = PlanningSession(cfg, bundle=bundle)
    episodes, env = session.episodes("calibration")
    try:
        report = calibrate_and_quantize(
            session.model, method, qconfig,
            lambda: session.plan(episodes, env, max_iter=int(cfg.quant_iter), skip_succeeded=False, progress=False),
            act_stats=act_stats, method_options=options,
        )
    finally:
        env.close()
    return session, qconfig, method, report, cfg
