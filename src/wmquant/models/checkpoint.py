"""World-model checkpoints: `model.safetensors` + `config.yaml`, no pickles.

A checkpoint directory holds every persistent parameter and buffer in `model.safetensors` and, in
`config.yaml`, the resolved model config under `model:` plus whatever sections the caller adds
(normalisation statistics, training info). `build_world_model` turns a model config into an
untrained `WorldModel`; `load_world_model` rebuilds it from a directory or from the name of a model
shipped in `wmquant/assets/models/<name>/`.

Model config (every key optional except `proprio_dim` and `action_dim`; defaults are DINO-WM's):

    img_size: 224              # dataset / decoder resolution
    encoder_img_size: null     # null: img_size // decoder scale * patch size for dinov2 (224 -> 196),
                               #       img_size for the vit backend
    num_hist: 3
    num_pred: 1
    frameskip: 5
    concat_dim: 1
    proprio_dim: 4             # raw proprio width
    action_dim: 2              # raw action width of ONE env step; the action encoder sees action_dim * frameskip
    proprio_emb_dim: 10
    action_emb_dim: 10
    num_proprio_repeat: 1
    num_action_repeat: 1
    train_encoder: false
    encoder:                   # backend dinov2: preset, depth (null: the preset's), weights (hub .pth or HF dir)
      backend: dinov2          # backend vit: patch_size, dim, depth, heads, mlp_ratio, out_dim, cls_token,
      preset: dinov2_vits14    #   num_register_tokens, layerscale_init, img_size (null: encoder_img_size),
      weights: null            #   weights (an encoder state dict in .safetensors)
    predictor: {depth: 6, heads: 16, dim_head: 64, mlp_dim: 2048, dropout: 0.1, emb_dropout: 0.0, final_norm: true}
    decoder:                   # null: no decoder
      {channel: 384, n_res_block: 4, n_res_channel: 128, n_embed: 2048, upsample_stride: 4, decode_stride: 4}
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

from ..errors import CheckpointError, ConfigError
from ..io import atomic_directory
from .decoder import PatchDecoder
from .embeddings import ProprioEmbedding
from .loading import assign_exact, build_for_loading, first_line, persistent_state, read_yaml_mapping, summarize_keys
from .predictor import ViTPredictor
from .vit import DINOV2_PATCH_SIZE, VisionTransformer, dinov2_vit, load_dinov2_weights
from .world_model import WorldModel

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
CHECKPOINT_VERSION = 1
_ALIASES_METADATA_KEY = "wmquant_aliases"

_REQUIRED = object()

_ENCODER_DEFAULTS: dict[str, dict[str, Any]] = {
    "dinov2": {"backend": "dinov2", "preset": "dinov2_vits14", "depth": None, "weights": None},
    "vit": {
        "backend": "vit",
        "patch_size": 8,
        "dim": 192,
        "depth": 6,
        "heads": 3,
        "mlp_ratio": 4.0,
        "out_dim": None,
        "cls_token": True,
        "num_register_tokens": 0,
        "layerscale_init": None,
        "img_size": None,
        "weights": None,
    },
}
_PREDICTOR_DEFAULTS = {"depth": 6, "heads": 16, "dim_head": 64, "mlp_dim": 2048, "dropout": 0.1, "emb_dropout": 0.0,
                       "final_norm": True}
_DECODER_DEFAULTS = {
    "channel": 384,
    "n_res_block": 4,
    "n_res_channel": 128,
    "n_embed": 2048,
    "upsample_stride": 4,
    "decode_stride": 4,
}
_MODEL_DEFAULTS: dict[str, Any] = {
    "img_size": 224,
    "encoder_img_size": None,
    "num_hist": 3,
    "num_pred": 1,
    "frameskip": 5,
    "concat_dim": 1,
    "proprio_dim": _REQUIRED,
    "action_dim": _REQUIRED,
    "proprio_emb_dim": 10,
    "action_emb_dim": 10,
    "num_proprio_repeat": 1,
    "num_action_repeat": 1,
    "train_encoder": False,
    "encoder": None,  # filled per backend
    "predictor": _PREDICTOR_DEFAULTS,
    "decoder": _DECODER_DEFAULTS,
}
# DINO-WM derives the encoder resolution from a decoder that upsamples by 16 (spec 3.1).
_DINO_WM_DECODER_SCALE = 16


def _plain(cfg: Any) -> Any:
    """A DictConfig (or any mapping) as plain dicts and lists."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(cfg, (DictConfig, ListConfig)):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if isinstance(cfg, Mapping):
        return {str(k): _plain(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [_plain(v) for v in cfg]
    return cfg


def _merge_section(section: str, given: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise ConfigError(f"model config section {section!r} must be a mapping, got {type(given).__name__}")
    unknown = set(given) - set(defaults)
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in model config section {section!r}; valid: {sorted(defaults)}")
    merged = {**defaults, **given}
    missing = [key for key, value in merged.items() if value is _REQUIRED]
    if missing:
        raise ConfigError(f"model config section {section!r} needs {missing}")
    return merged


def resolve_model_config(cfg: Mapping | Any) -> dict[str, Any]:
    """The model config with every default filled in and every key checked (ConfigError)."""
    cfg = _plain(cfg)
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"model config must be a mapping, got {type(cfg).__name__}")
    resolved = _merge_section("model", cfg, _MODEL_DEFAULTS)
    encoder = resolved["encoder"] or {}
    backend = encoder.get("backend", "dinov2")
    if backend not in _ENCODER_DEFAULTS:
        raise ConfigError(f"unknown encoder backend {backend!r}; valid: {sorted(_ENCODER_DEFAULTS)}")
    resolved["encoder"] = _merge_section("encoder", encoder, _ENCODER_DEFAULTS[backend])
    resolved["predictor"] = _merge_section("predictor", resolved["predictor"], _PREDICTOR_DEFAULTS)
    if resolved["decoder"] is not None:
        resolved["decoder"] = _merge_section("decoder", resolved["decoder"], _DECODER_DEFAULTS)
    if resolved["encoder_img_size"] is None:
        resolved["encoder_img_size"] = _default_encoder_img_size(resolved)
    return resolved


def _default_encoder_img_size(cfg: dict[str, Any]) -> int:
    encoder = cfg["encoder"]
    if encoder["backend"] == "vit":
        return int(cfg["img_size"])
    decoder = cfg["decoder"]
    scale = decoder["upsample_stride"] * decoder["decode_stride"] if decoder else _DINO_WM_DECODER_SCALE
    return (int(cfg["img_size"]) // scale) * DINOV2_PATCH_SIZE


def build_encoder(cfg: dict[str, Any], load_weights: bool) -> VisionTransformer:
    """The encoder of a resolved model config (`resolve_model_config`)."""
    encoder = cfg["encoder"]
    if encoder["backend"] == "dinov2":
        overrides = {"depth": encoder["depth"]} if encoder["depth"] is not None else {}
        model = dinov2_vit(encoder["preset"], **overrides)
        if load_weights and encoder["weights"] is not None:
            load_dinov2_weights(model, encoder["weights"])
        return model
    model = VisionTransformer(
        img_size=encoder["img_size"] or cfg["encoder_img_size"],
        patch_size=encoder["patch_size"],
        dim=encoder["dim"],
        depth=encoder["depth"],
        heads=encoder["heads"],
        mlp_ratio=encoder["mlp_ratio"],
        out_dim=encoder["out_dim"],
        cls_token=encoder["cls_token"],
        num_register_tokens=encoder["num_register_tokens"],
        layerscale_init=encoder["layerscale_init"],
    )
    if load_weights and encoder["weights"] is not None:
        assign_exact(model, _read_safetensors(Path(encoder["weights"]))[0], str(encoder["weights"]), "encoder weights")
    return model


def build_world_model(model_cfg: Mapping | Any, load_encoder_weights: bool = True) -> WorldModel:
    """An untrained WorldModel from a model config (see the module docstring for the keys).

    With `load_encoder_weights`, `encoder.weights` (if set) is loaded; `load_world_model` turns it
    off because the checkpoint carries the encoder's weights itself.
    """
    cfg = resolve_model_config(model_cfg)
    encoder = build_encoder(cfg, load_encoder_weights)
    encoder_img_size = int(cfg["encoder_img_size"])
    if encoder_img_size % encoder.patch_size:
        raise ConfigError(f"encoder_img_size={encoder_img_size} is not a multiple of the encoder patch size {encoder.patch_size}")
    proprio_encoder = ProprioEmbedding(int(cfg["proprio_dim"]), int(cfg["proprio_emb_dim"]))
    action_encoder = ProprioEmbedding(int(cfg["action_dim"]) * int(cfg["frameskip"]), int(cfg["action_emb_dim"]))
    token_dim = (
        encoder.emb_dim
        + proprio_encoder.emb_dim * int(cfg["num_proprio_repeat"])
        + action_encoder.emb_dim * int(cfg["num_action_repeat"])
    )
    predictor = ViTPredictor(
        num_patches=encoder.num_patches(encoder_img_size),
        num_frames=int(cfg["num_hist"]),
        dim=token_dim,
        **cfg["predictor"],
    )
    decoder = None
    if cfg["decoder"] is not None:
        decoder = PatchDecoder(emb_dim=encoder.emb_dim, **cfg["decoder"])
        decoded = (encoder_img_size // encoder.patch_size) * decoder.scale
        if decoded != int(cfg["img_size"]):
            raise ConfigError(
                f"decoder outputs {decoded} px (grid {encoder_img_size // encoder.patch_size} x strides "
                f"{cfg['decoder']['upsample_stride']}*{cfg['decoder']['decode_stride']}) but img_size is {cfg['img_size']}"
            )
    return WorldModel(
        encoder,
        proprio_encoder,
        action_encoder,
        predictor,
        decoder,
        num_hist=int(cfg["num_hist"]),
        num_pred=int(cfg["num_pred"]),
        frameskip=int(cfg["frameskip"]),
        encoder_img_size=encoder_img_size,
        concat_dim=int(cfg["concat_dim"]),
        num_proprio_repeat=int(cfg["num_proprio_repeat"]),
        num_action_repeat=int(cfg["num_action_repeat"]),
        train_encoder=bool(cfg["train_encoder"]),
    )


# --- saving ---------------------------------------------------------------------------------------


def yaml_ready(obj: Any) -> Any:
    """Tensors, arrays and paths as plain lists / strings so that YAML stays readable and safe."""
    if isinstance(obj, Mapping):
        return {str(k): yaml_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [yaml_ready(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return obj


def _check_model_matches(model: WorldModel, cfg: dict[str, Any]) -> None:
    """ConfigError unless `cfg` rebuilds a model with the same tensors and settings as `model`."""
    with torch.device("meta"):
        skeleton = build_world_model(cfg, load_encoder_weights=False)
    expected = {k: tuple(v.shape) for k, v in persistent_state(skeleton).items()}
    actual = {k: tuple(v.shape) for k, v in persistent_state(model).items()}
    if expected.keys() != actual.keys():
        raise ConfigError(
            "model config does not describe this model: tensors only in the model "
            f"{summarize_keys(actual.keys() - expected.keys())}, only in the config's model "
            f"{summarize_keys(expected.keys() - actual.keys())}"
        )
    for name, shape in expected.items():
        if actual[name] != shape:
            raise ConfigError(f"model config does not describe this model: {name!r} is {actual[name]} in the model, {shape} by the config")
    for attribute in ("num_hist", "frameskip", "encoder_img_size", "num_proprio_repeat", "num_action_repeat"):
        if getattr(model, attribute) != getattr(skeleton, attribute):
            raise ConfigError(
                f"model config does not describe this model: {attribute}={getattr(skeleton, attribute)} "
                f"in the config, {getattr(model, attribute)} in the model"
            )


def _split_shared(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses tensors that share memory: identical views become aliases (restored at
    load), other overlapping tensors are stored as separate copies."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple, str] = {}
    for name, tensor in state.items():
        tensor = tensor.detach()
        if tensor.numel():
            view = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
            if view in views:
                aliases[name] = views[view]
                continue
            views[view] = name
        tensors[name] = tensor
    storages: dict[int, int] = {}
    for tensor in tensors.values():
        if tensor.numel():
            pointer = tensor.untyped_storage().data_ptr()
            storages[pointer] = storages.get(pointer, 0) + 1
    return {
        name: (t.clone() if t.numel() and storages[t.untyped_storage().data_ptr()] > 1 else t).contiguous().cpu()
        for name, t in tensors.items()
    }, aliases


def save_world_model(model: WorldModel, cfg: Mapping | Any, out_dir: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
    """Write `out_dir/model.safetensors` and `out_dir/config.yaml` atomically (replacing out_dir).

    cfg: the model config the model was built from (checked against the model). extra: further
    top-level sections for config.yaml, e.g. {"normalization": ..., "training": ...}.
    Returns the output directory.
    """
    from safetensors.torch import save_file

    resolved = resolve_model_config(cfg)
    _check_model_matches(model, resolved)
    document: dict[str, Any] = {"wmquant_checkpoint_version": CHECKPOINT_VERSION, "model": resolved}
    for section, value in (extra or {}).items():
        if section in document:
            raise ConfigError(f"extra config section {section!r} is reserved; choose another name")
        document[section] = value
    tensors, aliases = _split_shared(dict(model.state_dict()))
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, overwrite=True) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", _ALIASES_METADATA_KEY: json.dumps(aliases)})
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(yaml_ready(document), sort_keys=False))
    return out_dir


# --- loading --------------------------------------------------------------------------------------


# The original study's README names the Wall checkpoint `wall_single` in its quantization commands.
SHIPPED_ALIASES = {"wall_single": "wall"}


def _shipped_models_root():
    return resources.files("wmquant") / "assets" / "models"


def shipped_model_names() -> list[str]:
    """Names of the models shipped with wmquant (directories under wmquant/assets/models)."""
    root = _shipped_models_root()
    if not root.is_dir():
        return []
    return sorted(entry.name for entry in root.iterdir() if entry.is_dir() and (entry / CONFIG_FILE).is_file())


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; aliases recorded at save time are restored."""
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{path}: missing weights file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:  # safetensors raises its own error type for corrupt or truncated files
        raise CheckpointError(f"{path}: not a readable safetensors file, truncated or corrupt ({first_line(exc)})") from exc
    try:
        aliases = json.loads(metadata.get(_ALIASES_METADATA_KEY, "{}"))
    except ValueError as exc:
        raise CheckpointError(f"{path}: corrupt {_ALIASES_METADATA_KEY} metadata ({exc})") from exc
    for alias, target in aliases.items():
        if target not in tensors:
            raise CheckpointError(f"{path}: tensor {alias!r} aliases {target!r}, which is not in the file")
        tensors[alias] = tensors[target]
    return tensors, metadata


def _read_config(directory: Path) -> dict[str, Any]:
    config_path = directory / CONFIG_FILE
    document = read_yaml_mapping(config_path, f"a wmquant model directory holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    if not isinstance(document.get("model"), dict):
        raise CheckpointError(f"{config_path}: no 'model' section; not a wmquant model config")
    return document


def read_model_config(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """config.yaml of a model directory or a shipped model, without loading its weights."""
    return _read_config(model_directory(name_or_path))


def _load_from_directory(directory: Path, device: str | torch.device) -> tuple[WorldModel, dict[str, Any]]:
    config_path = directory / CONFIG_FILE
    document = _read_config(directory)
    try:
        model = build_for_loading(lambda: build_world_model(document["model"], load_encoder_weights=False))
    except ConfigError as exc:
        raise ConfigError(f"{config_path}: {exc}") from None
    weights_path = directory / WEIGHTS_FILE
    tensors, _ = _read_safetensors(weights_path)
    assign_exact(model, tensors, str(weights_path), "weights")
    return model.to(device).eval(), document


def model_directory(name_or_path: str | os.PathLike) -> Path:
    """The directory of a model: `name_or_path` itself if it is a directory, else the shipped model
    of that name (or alias). An unknown name raises CheckpointError listing the shipped ones."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    text = str(name_or_path)
    if "/" in text or os.sep in text:
        raise CheckpointError(f"{path}: no such model directory")
    names = shipped_model_names()
    text = SHIPPED_ALIASES.get(text, text)
    if text not in names:
        shipped = ", ".join(names) if names else "none"
        raise CheckpointError(f"unknown model name {text!r}: not a directory and not a shipped model (shipped: {shipped})")
    # package data is installed as plain files (setuptools package-data), so the traversable is a path
    return Path(str(_shipped_models_root() / text))


def load_world_model(name_or_path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[WorldModel, dict[str, Any]]:
    """(WorldModel in eval mode, config.yaml as a dict) from a model directory or a shipped name.

    A bare name (no path separator, not an existing directory) is looked up among the shipped
    models; an unknown name raises CheckpointError listing them.
    """
    return _load_from_directory(model_directory(name_or_path), device)


def _describe(document: dict[str, Any]) -> str:
    model = document.get("model") or {}
    encoder = model.get("encoder") or {}
    if encoder.get("backend") == "dinov2":
        encoder_text = encoder.get("preset", "dinov2")
    else:
        encoder_text = f"vit/{encoder.get('patch_size')} dim {encoder.get('dim')} depth {encoder.get('depth')}"
    predictor = model.get("predictor") or {}
    env = (document.get("planning") or {}).get("env", "?")
    return (
        f"env {env}, {model.get('img_size')} px, encoder {encoder_text}, predictor depth {predictor.get('depth')}, "
        f"num_hist {model.get('num_hist')}, frameskip {model.get('frameskip')}"
    )


def shipped_model_descriptions() -> list[tuple[str, str]]:
    """(name, one-line description: env, resolution, encoder, predictor) of every shipped model."""
    out = []
    for name in shipped_model_names():
        text = (_shipped_models_root() / name / CONFIG_FILE).read_text()
        try:
            description = _describe(yaml.safe_load(text) or {})
        except yaml.YAMLError as exc:
            description = f"unreadable config.yaml ({first_line(exc)})"
        out.append((name, description))
    return out
