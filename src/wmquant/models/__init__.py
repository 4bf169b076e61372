"""The DINO-WM world model: encoders, predictor, embeddings, decoder, checkpoints, official runs."""

from .checkpoint import (
    build_world_model,
    load_world_model,
    resolve_model_config,
    save_world_model,
    shipped_model_names,
)
from .decoder import PatchDecoder
from .embeddings import ProprioEmbedding
from .official import load_official_run
from .predictor import ViTPredictor, frame_causal_mask, upstream_predictor_key
from .vit import DINOV2_PRESETS, VisionTransformer, dinov2_vit, load_dinov2_weights
from .world_model import WorldModel

__all__ = [
    "DINOV2_PRESETS",
    "PatchDecoder",
    "ProprioEmbedding",
    "ViTPredictor",
    "VisionTransformer",
    "WorldModel",
    "build_world_model",
    "dinov2_vit",
    "frame_causal_mask",
    "load_dinov2_weights",
    "load_official_run",
    "load_world_model",
    "resolve_model_config",
    "save_world_model",
    "shipped_model_names",
    "upstream_predictor_key",
]
