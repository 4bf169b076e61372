"""Load official DINO-WM training runs without executing anything from the pickle.

An official run is `{ckpt_base_path}/outputs/{model_name}/` with `hydra.yaml` (the resolved
training config) and `checkpoints/model_{epoch}.pth`: a `torch.save`d dict of whole pickled
modules (`models.vit.ViTPredictor`, `models.vqvae.VQVAE`, `models.proprio.ProprioceptiveEmbedding`)
and accelerate-wrapped optimizers (spec 4.1).

Plain `torch.load` would import and run DINO-WM's code (and anything else a pickle names). Here
the pickle goes through `RestrictedUnpickler`: every known class becomes an inert `PickledRecord`
that only stores the state it is given (no foreign constructor or `__setstate__` runs), torch's
tensor-rebuild helpers and a few builtin containers are allowed as they are, and every other
global is refused before it is resolved. wmquant modules are then built from the recorded
`_parameters` / `_buffers` trees. The encoder is not in the file: it comes from local DINOv2
weights (`load_dinov2_weights`).
"""

from __future__ import annotations

import _compat_pickle
import collections
import pickle
import re
import types
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError
from .checkpoint import resolve_model_config
from .decoder import PatchDecoder
from .embeddings import ProprioEmbedding
from .predictor import ViTPredictor, upstream_predictor_state
from .loading import assign_exact, build_for_loading, first_line, read_yaml_mapping
from .vit import DINOV2_PATCH_SIZE, DINOV2_PRESETS, dinov2_vit, load_dinov2_weights
from .world_model import WorldModel

# --- the restricted unpickler ---------------------------------------------------------------------


class PickledRecord:
    """An inert stand-in for a pickled object of an allowed class.

    Records the constructor arguments (`args`), the state passed to `__setstate__` (`state`, for
    a module its `__dict__`) and items appended or set by the pickle (`items`). Nothing else runs.
    """

    class_path = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "PickledRecord":
        record = object.__new__(cls)
        record.args, record.kwargs, record.state, record.items = args, kwargs, None, []
        return record

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # everything was recorded in __new__

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def append(self, item: Any) -> None:
        self.items.append(item)

    def extend(self, items: Any) -> None:
        self.items.extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def __repr__(self) -> str:
        return f"<pickled {self.class_path}>"


_RECORD_CLASSES: dict[str, type[PickledRecord]] = {}


def _record_class(path: str) -> type[PickledRecord]:
    if path not in _RECORD_CLASSES:
        _RECORD_CLASSES[path] = type(path.rpartition(".")[2], (PickledRecord,), {"class_path": path})
    return _RECORD_CLASSES[path]


def _dict_ignoring_factory(*args: Any) -> dict:
    """`collections.defaultdict(factory, items)` as a plain dict: the factory is never called."""
    return dict(*args[1:])


_MODULE_CLASSES = {
    # DINO-WM's own modules (spec 4.1).
    "models.vit": ("ViTPredictor", "Transformer", "Attention", "FeedForward"),
    "models.vqvae": ("VQVAE", "Quantize", "Decoder", "Encoder", "ResBlock"),
    "models.proprio": ("ProprioceptiveEmbedding",),
    # The torch.nn classes those modules contain, under their defining modules.
    "torch.nn.modules.linear": ("Linear", "Identity"),
    "torch.nn.modules.normalization": ("LayerNorm",),
    "torch.nn.modules.dropout": ("Dropout",),
    "torch.nn.modules.activation": ("GELU", "ReLU", "Softmax"),
    "torch.nn.modules.container": ("Sequential", "ModuleList"),
    "torch.nn.modules.conv": ("Conv1d", "Conv2d", "ConvTranspose2d"),
    # Optimizers and the accelerate wrappers and state objects they hold; only ever recorded.
    "torch.optim": ("Adam", "AdamW"),
    "torch.optim.adam": ("Adam",),
    "torch.optim.adamw": ("AdamW",),
    "torch.amp.grad_scaler": ("GradScaler", "OptState", "_refresh_per_optimizer_state"),
    "torch.cuda.amp.grad_scaler": ("GradScaler", "OptState", "_refresh_per_optimizer_state"),
    "accelerate.optimizer": ("AcceleratedOptimizer",),
    "accelerate.state": ("AcceleratorState", "GradientState", "PartialState"),
    "accelerate.utils.dataclasses": (
        "DistributedType",
        "ComputeEnvironment",
        "DynamoBackend",
        "PrecisionType",
        "TorchDynamoPlugin",
        "GradientAccumulationPlugin",
    ),
}
_RECORDED = {f"{module}.{name}" for module, names in _MODULE_CLASSES.items() for name in names}

# Values torch itself writes into every checkpoint; torch's weights-only loader allows them too.
_DTYPES = {
    f"torch.{name}": getattr(torch, name)
    for name in ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")
}
_ALLOWED_VALUES: dict[str, Any] = {
    "torch._utils._rebuild_tensor": torch._utils._rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": torch._utils._rebuild_parameter_with_state,
    "torch.Size": torch.Size,
    "torch.device": torch.device,
    "collections.OrderedDict": collections.OrderedDict,
    "collections.defaultdict": _dict_ignoring_factory,
    "builtins.dict": dict,
    "builtins.list": list,
    "builtins.tuple": tuple,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    **_DTYPES,
}


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle named a global outside the allow-list; raised before anything is resolved."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only allow-listed globals: records for known classes, torch's rebuild helpers and
    builtin containers for values. Anything else raises ForbiddenGlobal."""

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles (torch.save's default) spell Python 3 names the Python 2 way
        # (`__builtin__.set`); translate them as pickle itself does, then check the allow-list.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        path = f"{module}.{name}"
        if path in _RECORDED:
            return _record_class(path)
        if path in _ALLOWED_VALUES:
            return _ALLOWED_VALUES[path]
        raise ForbiddenGlobal(path)


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


# torch.load takes a pickle *module*: it subclasses `.Unpickler` and calls `.load` for the headers
# of old-format files.
restricted_pickle = types.ModuleType("wmquant_restricted_pickle")
restricted_pickle.Unpickler = RestrictedUnpickler
restricted_pickle.load = _restricted_load
restricted_pickle.UnpicklingError = pickle.UnpicklingError


def restricted_torch_load(path: Path) -> Any:
    """`torch.load` of an official checkpoint through the restricted unpickler, tensors on CPU."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing checkpoint file")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(entry.endswith("constants.pkl") for entry in archive.namelist()):
                raise CheckpointError(f"{path}: a TorchScript archive, not a DINO-WM checkpoint")
    try:
        return torch.load(path, map_location="cpu", pickle_module=restricted_pickle, weights_only=False, mmap=False)
    except ForbiddenGlobal as exc:
        raise CheckpointError(
            f"{path}: refused to unpickle global '{exc.path}': only DINO-WM model classes, torch modules, "
            "optimizers and accelerate state are allowed, and nothing from the file is executed"
        ) from None
    except Exception as exc:  # truncated zip, bad pickle opcodes, records used in unexpected ways
        raise CheckpointError(f"{path}: cannot read the checkpoint, truncated or corrupt ({first_line(exc)})") from exc


# --- from records to wmquant modules --------------------------------------------------------------


def _expect_record(obj: Any, class_path: str, what: str, source: str) -> PickledRecord:
    if not isinstance(obj, PickledRecord) or obj.class_path != class_path:
        found = obj.class_path if isinstance(obj, PickledRecord) else type(obj).__name__
        raise CheckpointError(f"{source}: '{what}' is {found}, expected {class_path}")
    if not isinstance(obj.state, dict) or "_modules" not in obj.state:
        raise CheckpointError(f"{source}: '{what}' ({class_path}) has no module state")
    return obj


def _child(record: PickledRecord, dotted: str, source: str) -> PickledRecord:
    node = record
    for part in dotted.split("."):
        children = node.state.get("_modules", {}) if isinstance(node.state, dict) else {}
        node = children.get(part)
        if not isinstance(node, PickledRecord):
            raise CheckpointError(f"{source}: {record.class_path} has no sub-module {dotted!r}")
    return node


def module_tensors(record: PickledRecord, source: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """The persistent parameters and buffers of a recorded module tree, by state-dict name."""
    state = record.state
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: {record.class_path} at {prefix or 'top level'!r} has no module state")
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    entries = list((state.get("_parameters") or {}).items())
    entries += [(k, v) for k, v in (state.get("_buffers") or {}).items() if k not in non_persistent]
    tensors = {}
    for name, value in entries:
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: {prefix}{name} is {type(value).__name__}, not a tensor")
        tensors[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PickledRecord):
            raise CheckpointError(f"{source}: sub-module {prefix}{name} is {type(child).__name__}, not a module")
        tensors.update(module_tensors(child, source, f"{prefix}{name}."))
    return tensors


def _tensor(tensors: dict[str, torch.Tensor], name: str, source: str, what: str) -> torch.Tensor:
    if name not in tensors:
        raise CheckpointError(f"{source}: {what} has no tensor {name!r}")
    return tensors[name]


def _dropout_p(record: PickledRecord, dotted: str, source: str) -> float:
    return float(_child(record, dotted, source).state.get("p", 0.0))


def _check_matches(hydra_section: dict, key: str, found: Any, source: str) -> None:
    """CheckpointError if hydra.yaml states `key` and disagrees with the weights."""
    if key in hydra_section and hydra_section[key] != found:
        raise CheckpointError(f"{source}: hydra.yaml says {key}={hydra_section[key]} but the weights have {key}={found}")


def _predictor_from_record(record: PickledRecord, num_patches: int, hydra: dict, source: str) -> tuple[ViTPredictor, dict]:
    tensors = module_tensors(record, source)
    what = "predictor"
    pos_embedding = _tensor(tensors, "pos_embedding", source, what)
    _, positions, dim = pos_embedding.shape
    if positions % num_patches:
        raise CheckpointError(f"{source}: predictor pos_embedding has {positions} positions, not a multiple of {num_patches} patches")
    layers = _child(record, "transformer.layers", source).state["_modules"]
    attention = _child(record, "transformer.layers.0.0", source)
    heads = int(attention.state.get("heads", hydra.get("heads", 0)))
    qkv = _tensor(tensors, "transformer.layers.0.0.to_qkv.weight", source, what)
    if heads < 1 or qkv.shape[0] % (3 * heads):
        raise CheckpointError(f"{source}: cannot split to_qkv of {qkv.shape[0]} rows into 3 x {heads} heads")
    settings = {
        "depth": len(layers),
        "heads": heads,
        "dim_head": qkv.shape[0] // (3 * heads),
        "mlp_dim": _tensor(tensors, "transformer.layers.0.1.net.1.weight", source, what).shape[0],
        "dropout": _dropout_p(record, "transformer.layers.0.0.dropout", source),
        "emb_dropout": _dropout_p(record, "dropout", source),
    }
    for key in ("depth", "heads", "dim_head", "mlp_dim"):
        _check_matches(hydra, key, settings[key], source)
    predictor = ViTPredictor(num_patches, positions // num_patches, dim, **settings)
    assign_exact(predictor, upstream_predictor_state(tensors, predictor, source), source, "predictor")
    return predictor, settings


def _conv_transpose_count(record: PickledRecord, source: str) -> int:
    layers = _child(record, "blocks", source).state["_modules"].values()
    return sum(isinstance(layer, PickledRecord) and layer.class_path.endswith(".ConvTranspose2d") for layer in layers)


_DECODER_LAYER_WEIGHT = re.compile(r"^dec\.blocks\.(\d+)\.weight$")


def _decoder_from_record(record: PickledRecord, source: str) -> tuple[PatchDecoder, dict]:
    if record.state.get("quantize", False):
        raise CheckpointError(f"{source}: the decoder was trained with quantize=True, which wmquant does not implement")
    tensors = module_tensors(record, source)
    what = "decoder"
    stem = _tensor(tensors, "upsample_b.blocks.0.weight", source, what)
    upsample = _child(record, "upsample_b", source)
    n_res_block = sum(
        isinstance(layer, PickledRecord) and layer.class_path == "models.vqvae.ResBlock"
        for layer in _child(upsample, "blocks", source).state["_modules"].values()
    )
    last_layer = max((int(m.group(1)) for m in map(_DECODER_LAYER_WEIGHT.match, tensors) if m), default=None)
    if last_layer is None:
        raise CheckpointError(f"{source}: decoder has no dec.blocks layers")
    settings = {
        "channel": stem.shape[0],
        "n_res_block": n_res_block,
        "n_res_channel": _tensor(tensors, "upsample_b.blocks.1.conv.1.weight", source, what).shape[0] if n_res_block else 1,
        "n_embed": _tensor(tensors, "quantize_b.embed", source, what).shape[1],
        "upsample_stride": 2 ** _conv_transpose_count(upsample, source),
        "decode_stride": 2 ** _conv_transpose_count(_child(record, "dec", source), source),
    }
    out_channels = tensors[f"dec.blocks.{last_layer}.weight"].shape[1]
    try:
        decoder = PatchDecoder(emb_dim=stem.shape[1], out_channels=out_channels, **settings)
    except ConfigError as exc:
        raise CheckpointError(f"{source}: unsupported decoder layout ({exc})") from None
    assign_exact(decoder, tensors, source, "decoder")
    return decoder, settings


def _embedding_from_record(record: PickledRecord, what: str, source: str) -> ProprioEmbedding:
    tensors = module_tensors(record, source)
    weight = _tensor(tensors, "patch_embed.weight", source, what)
    if weight.ndim != 3 or weight.shape[2] != 1:
        raise CheckpointError(f"{source}: {what} patch_embed weight {tuple(weight.shape)} is not a kernel-1 Conv1d")
    embedding = ProprioEmbedding(in_chans=weight.shape[1], emb_dim=weight.shape[0])
    assign_exact(embedding, tensors, source, what)
    return embedding


# --- the run directory ----------------------------------------------------------------------------


def _hydra_value(hydra: dict, key: str, path: Path) -> Any:
    node: Any = hydra
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{path}: missing training setting {key!r}")
        node = node[part]
    return node


def load_official_run(
    ckpt_base_path: str | Path,
    model_name: str,
    model_epoch: int | str = "latest",
    dinov2_weights: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> tuple[WorldModel, dict[str, Any]]:
    """(WorldModel in eval mode, training config) from `{ckpt_base_path}/outputs/{model_name}/`.

    dinov2_weights: the encoder's local weights, a torch-hub state dict
    (`dinov2_vits14_pretrain.pth`) or a Hugging Face `facebook/dinov2-small` directory.
    The returned config is the run's hydra.yaml (img_size, frameskip, ... as upstream) plus a
    "wmquant" section: {"model": the equivalent wmquant model config (so that
    `save_world_model(model, cfg["wmquant"]["model"], out)` converts the run), "run_dir",
    "checkpoint", "epoch"}.
    """
    run_dir = Path(ckpt_base_path) / "outputs" / model_name
    hydra_path = run_dir / "hydra.yaml"
    checkpoint_path = run_dir / "checkpoints" / f"model_{model_epoch}.pth"
    hydra = read_yaml_mapping(hydra_path, "an official DINO-WM run directory holds hydra.yaml and checkpoints/", ConfigError)
    img_size, num_hist, frameskip = (int(_hydra_value(hydra, key, hydra_path)) for key in ("img_size", "num_hist", "frameskip"))
    concat_dim = int(hydra.get("concat_dim", 1))
    if concat_dim != 1:
        raise ConfigError(f"{hydra_path}: concat_dim={concat_dim} is not supported; wmquant implements concat_dim=1 (DINO-WM's default)")
    repeats = {key: int(hydra.get(key, 1)) for key in ("num_proprio_repeat", "num_action_repeat")}
    encoder_name = str(_hydra_value(hydra, "encoder.name", hydra_path))
    feature_key = hydra["encoder"].get("feature_key", "x_norm_patchtokens")
    if encoder_name not in DINOV2_PRESETS:
        raise ConfigError(f"{hydra_path}: encoder {encoder_name!r} is not a DINOv2 preset; valid: {', '.join(sorted(DINOV2_PRESETS))}")
    if feature_key != "x_norm_patchtokens":
        raise ConfigError(f"{hydra_path}: encoder feature_key {feature_key!r} is not supported (only x_norm_patchtokens)")
    if dinov2_weights is None:
        raise CheckpointError(
            f"{run_dir}: the encoder {encoder_name} is not stored in DINO-WM checkpoints; pass dinov2_weights= a local "
            f"{encoder_name}_pretrain.pth (torch-hub state dict) or a Hugging Face DINOv2 directory"
        )

    # DINO-WM sizes the encoder input from a decoder that upsamples by 16 (spec 3.1): 224 -> 196.
    patches_per_side = img_size // 16
    encoder_img_size = patches_per_side * DINOV2_PATCH_SIZE
    num_patches = patches_per_side**2

    checkpoint = restricted_torch_load(checkpoint_path)
    source = str(checkpoint_path)
    if not isinstance(checkpoint, dict) or "predictor" not in checkpoint:
        raise CheckpointError(f"{source}: expected DINO-WM's checkpoint dict with a 'predictor' entry")
    try:
        predictor_record = _expect_record(checkpoint["predictor"], "models.vit.ViTPredictor", "predictor", source)
        predictor, predictor_settings = _predictor_from_record(predictor_record, num_patches, hydra.get("predictor") or {}, source)
        proprio_encoder, action_encoder = (
            _embedding_from_record(
                _expect_record(checkpoint.get(key), "models.proprio.ProprioceptiveEmbedding", key, source), key, source
            )
            for key in ("proprio_encoder", "action_encoder")
        )
        decoder, decoder_settings = None, None
        if checkpoint.get("decoder") is not None:
            decoder_record = _expect_record(checkpoint["decoder"], "models.vqvae.VQVAE", "decoder", source)
            decoder, decoder_settings = _decoder_from_record(decoder_record, source)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        # The pickle held the allowed classes but not in DINO-WM's module layout.
        raise CheckpointError(f"{source}: unexpected module layout for a DINO-WM checkpoint ({first_line(exc)})") from exc
    _check_matches(hydra, "proprio_emb_dim", proprio_encoder.emb_dim, source)
    _check_matches(hydra, "action_emb_dim", action_encoder.emb_dim, source)
    if action_encoder.in_chans % frameskip:
        raise CheckpointError(f"{source}: action encoder input width {action_encoder.in_chans} is not a multiple of frameskip {frameskip}")

    encoder = build_for_loading(lambda: dinov2_vit(encoder_name))
    load_dinov2_weights(encoder, dinov2_weights)
    try:
        model = WorldModel(
            encoder,
            proprio_encoder,
            action_encoder,
            predictor,
            decoder,
            num_hist=num_hist,
            frameskip=frameskip,
            encoder_img_size=encoder_img_size,
            **repeats,
        )
    except ConfigError as exc:
        raise CheckpointError(f"{source} with {hydra_path.name}: {exc}") from None

    model_cfg = resolve_model_config(
        {
            "img_size": img_size,
            "encoder_img_size": encoder_img_size,
            "num_hist": num_hist,
            "frameskip": frameskip,
            "proprio_dim": proprio_encoder.in_chans,
            "action_dim": action_encoder.in_chans // frameskip,
            "proprio_emb_dim": proprio_encoder.emb_dim,
            "action_emb_dim": action_encoder.emb_dim,
            **repeats,
            "encoder": {"backend": "dinov2", "preset": encoder_name, "weights": str(dinov2_weights)},
            "predictor": predictor_settings,
            "decoder": decoder_settings,
        }
    )
    wmquant = {"model": model_cfg, "run_dir": str(run_dir), "checkpoint": source, "epoch": checkpoint.get("epoch")}
    return model.to(device).eval(), {**hydra, "wmquant": wmquant}
