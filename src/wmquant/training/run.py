"""Training a world model: pretrain the encoder (temporal-metric objective), freeze it, train the
world model (`run_training`; its command line is `wmquant train`, wmquant.commands.train).

    wmquant train --config-name train_wall.yaml dataset_path=DATA output_dir=RUN [key=value ...]

Output directory:
    encoder/encoder.safetensors   the frozen encoder (after the unit-variance scale is folded in)
    encoder/landscape.json|png    its goal-cost landscape (Wall and PushT)
    model/model.safetensors       the world model, loadable with `model_name=RUN/model`
    model/config.yaml
    train_log.jsonl               losses, one JSON line per log step
    checkpoints/                  resumable state (re-running the same command continues)
    train_summary.json            times, final losses, the command
"""

from __future__ import annotations

import copy
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .. import io as wio
from ..data.transforms import to_model_input
from ..errors import ConfigError
from ..hardware import describe_device
from .batches import EpisodeTensors
from .encoder import (MetricPretrainConfig, StateReadout, pretrain_metric_encoder, pretrain_optimizer,
                      unit_variance_scale)
from .state import has_state, load_state, rng_state, save_state, set_rng_state
from .world_model import WorldModelTrainConfig, make_optimizers, train_world_model

STAGES = ("encoder", "world_model")


class JsonlLog:
    def __init__(self, path: Path, stage: str) -> None:
        self.path = path
        self.stage = stage

    def __call__(self, entry: dict[str, Any]) -> None:
        # Appending a whole line at a time; a killed run loses at most the line being written.
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"stage": self.stage, **entry}) + "\n")


def _device(name: str) -> torch.device:
    from ..planning.engine import resolve_device

    return resolve_device(name)


def _encoder_module(model_cfg: dict[str, Any]):
    from ..models.checkpoint import build_encoder, resolve_model_config

    resolved = resolve_model_config(model_cfg)
    return build_encoder(resolved, load_weights=False), resolved


def _fold_scale(encoder: torch.nn.Module, scale: float) -> None:
    """Multiply the encoder's output by `scale` by rescaling its last affine map."""
    last = encoder.head if getattr(encoder, "head", None) is not None else encoder.norm
    with torch.no_grad():
        last.weight.mul_(scale)
        if last.bias is not None:
            last.bias.mul_(scale)


def _state_readout(encoder: torch.nn.Module, train: EpisodeTensors, img_size: int,
                   pre: MetricPretrainConfig) -> StateReadout | None:
    """The auxiliary state readout of the encoder's pretraining, if its weight asks for one."""
    if pre.state_readout_weight <= 0:
        return None
    with torch.no_grad():
        first = train.frames(torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
        latent_numel = encoder(to_model_input(first, img_size))[0].numel()
    # initialised from its own seed, so that the global random stream, and every stage after this one, stays as it
    # is without a readout
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(pre.seed)
        return StateReadout(latent_numel, train, pre.angle_dims)


def run_encoder_stage(cfg: DictConfig, out: Path, train: EpisodeTensors, log: JsonlLog, progress: bool) -> torch.nn.Module:
    from safetensors.torch import load_file, save_file

    final = out / "encoder" / "encoder.safetensors"
    encoder, resolved = _encoder_module(OmegaConf.to_container(cfg.model, resolve=True))
    if final.exists():
        encoder.load_state_dict(load_file(str(final)))
        return encoder.to(train.device).eval()
    if cfg.encoder_checkpoint:
        encoder.load_state_dict(load_file(str(cfg.encoder_checkpoint)))
        encoder = encoder.to(train.device).eval()
    elif int(cfg.encoder_pretrain.steps) == 0:
        # no pretraining: the encoder as initialised (a baseline, or for a world model that trains it
        # end to end); no unit-variance scale is folded in, since its latents hardly vary over frames
        encoder = encoder.to(train.device).eval()
        log({"step": 0, "pretrained": False})
    else:
        pre = MetricPretrainConfig(**OmegaConf.to_container(cfg.encoder_pretrain, resolve=True))
        ckpt_dir = out / "checkpoints" / "encoder"
        start, optimizer = 0, None
        encoder.to(train.device)
        readout = _state_readout(encoder, train, int(cfg.model.img_size), pre)
        if cfg.resume and has_state(ckpt_dir):
            state = load_state(ckpt_dir)
            encoder.load_state_dict(state["encoder"])
            if readout is not None:
                readout.load_state_dict(state["readout"])
            optimizer = pretrain_optimizer(encoder, readout, pre)
            optimizer.load_state_dict(state["optimizer"])
            set_rng_state(state["rng"])
            start = int(state["step"])

        def checkpoint(step: int, opt: torch.optim.Optimizer) -> None:
            extra = {"readout": readout.state_dict()} if readout is not None else {}
            save_state(ckpt_dir, {"step": step, "encoder": encoder.state_dict(), "optimizer": opt.state_dict(),
                                  "rng": rng_state(), **extra})

        pretrain_metric_encoder(encoder, train, int(cfg.model.img_size), pre, log=log, progress=progress,
                                start_step=start, optimizer=optimizer, checkpoint=checkpoint,
                                checkpoint_every=int(cfg.checkpoint_every), readout=readout)
        scale = unit_variance_scale(encoder, train, int(cfg.model.img_size))
        _fold_scale(encoder, scale)
        log({"step": pre.steps, "unit_variance_scale": scale})
    with wio.atomic_path(final) as tmp:
        save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(tmp))
    return encoder.eval()


def run_world_model_stage(cfg: DictConfig, out: Path, encoder: torch.nn.Module, train: EpisodeTensors,
                          val: EpisodeTensors | None, normalization, log: JsonlLog, progress: bool,
                          latent_scale: float = 1.0):
    from ..models.checkpoint import build_world_model, save_world_model

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg["encoder"]["weights"] = None
    model = build_world_model(model_cfg, load_encoder_weights=False)
    model.encoder.load_state_dict(encoder.state_dict())
    model.encoder.requires_grad_(model.train_encoder)  # model.train_encoder: trained with the world model
    model.to(train.device)
    tcfg = WorldModelTrainConfig(**OmegaConf.to_container(cfg.training, resolve=True))
    ckpt_dir = out / "checkpoints" / "world_model"
    start, optimizers = 0, None
    if cfg.resume and has_state(ckpt_dir):
        state = load_state(ckpt_dir)
        model.load_state_dict(state["model"])
        optimizers = make_optimizers(model, tcfg)
        for opt, opt_state in zip(optimizers, state["optimizers"]):
            opt.load_state_dict(opt_state)
        set_rng_state(state["rng"])
        start = int(state["step"])

    def checkpoint(step: int, opts: list) -> None:
        save_state(ckpt_dir, {"step": step, "model": model.state_dict(), "optimizers": [o.state_dict() for o in opts],
                              "rng": rng_state()})

    train_world_model(model, train, val, int(cfg.model.img_size), tcfg, log=log, progress=progress, start_step=start,
                      optimizers=optimizers, checkpoint=checkpoint, checkpoint_every=int(cfg.checkpoint_every),
                      reference_encoder=encoder if model.train_encoder else None, latent_scale=latent_scale)
    planning = {
        "env": str(cfg.env),
        "img_size": int(cfg.model.img_size),
        "frameskip": int(cfg.model.frameskip),
        "action_dim": int(cfg.model.action_dim),
        "render_size": cfg.render_size,
        "normalization": normalization.as_dict(),
    }
    # the encoder is frozen from here on, whether or not it was trained with the world model
    trained_encoder = bool(model.train_encoder)
    model_cfg["train_encoder"] = False
    model.train_encoder = False
    save_world_model(model.cpu(), model_cfg, out / "model", extra={"planning": planning, "training": {
        "encoder_trained_with_world_model": trained_encoder,
        "encoder_regularizer": tcfg.encoder_regularizer if trained_encoder else None,
        "dataset_path": str(cfg.dataset_path), "seed": int(cfg.seed),
        "command": "wmquant train " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
    }})
    return model


def run_training(cfg: DictConfig, progress: bool = True) -> dict[str, Any]:
    from ..data import load_dataset

    for stage in cfg.stages:
        if stage not in STAGES:
            raise ConfigError(f"unknown training stage {stage!r}; valid: {', '.join(STAGES)}")
    if not cfg.dataset_path or not cfg.output_dir:
        raise ConfigError("wmquant train needs dataset_path=DIR and output_dir=DIR")
    output_scale = cfg.get("encoder_output_scale", 1.0)
    if isinstance(output_scale, bool) or not isinstance(output_scale, (int, float)) or not output_scale > 0:
        raise ConfigError(f"encoder_output_scale={output_scale!r} must be a positive number")
    # both stages' settings are checked before anything is read or written
    MetricPretrainConfig(**OmegaConf.to_container(cfg.encoder_pretrain, resolve=True))
    world_model_config = WorldModelTrainConfig(**OmegaConf.to_container(cfg.training, resolve=True))
    if world_model_config.encoder_regularizer == "sigreg" and not cfg.model.get("train_encoder", False):
        raise ConfigError("training.encoder_regularizer=sigreg regularises an encoder trained end to end; "
                          "it needs model.train_encoder=true")
    device = _device(str(cfg.device))
    torch.manual_seed(int(cfg.seed))
    out = Path(str(cfg.output_dir))
    timings: dict[str, float] = {}
    start = time.perf_counter()
    # the data are read before anything is written, so a bad dataset_path leaves no output behind
    train_ds = load_dataset(str(cfg.env), str(cfg.dataset_path), split="train")
    val_ds = load_dataset(str(cfg.env), str(cfg.dataset_path), split="val")
    wio.make_output_dir(out)
    wio.write_text(out / "train_config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    log_path = out / "train_log.jsonl"
    train = EpisodeTensors.from_dataset(train_ds, device)
    val = EpisodeTensors.from_dataset(val_ds, device) if len(val_ds) else None
    timings["load_seconds"] = time.perf_counter() - start
    encoder = None
    t0 = time.perf_counter()
    if "encoder" in cfg.stages or "world_model" in cfg.stages:
        encoder = run_encoder_stage(cfg, out, train, JsonlLog(log_path, "encoder"), progress)
    timings["encoder_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if "world_model" in cfg.stages:
        if output_scale != 1.0:
            # the visual latent's scale against the proprio embedding's sets how the planning cost
            # (visual MSE + alpha * proprio MSE) weighs them; encoder.safetensors keeps unit variance
            encoder = copy.deepcopy(encoder)
            _fold_scale(encoder, float(output_scale))
        run_world_model_stage(cfg, out, encoder, train, val, train_ds.normalization, JsonlLog(log_path, "world_model"), progress,
                              latent_scale=float(output_scale))
    timings["world_model_seconds"] = time.perf_counter() - t0
    last: dict[str, Any] = {}
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            entry = json.loads(line)
            last[entry["stage"]] = entry
    summary = {
        "env": str(cfg.env),
        "device": describe_device(device),
        **{k: round(v, 2) for k, v in timings.items()},
        "total_seconds": round(time.perf_counter() - start, 2),
        "final_log": last,
        "train_episodes": len(train_ds),
        "val_episodes": len(val_ds),
    }
    if device.type == "cuda":
        # what a run needs on the card, to plan how many trainings can share one (scripts/gpu/pusht_screen.sh)
        summary["peak_device_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    wio.write_json(out / "train_summary.json", summary)
    return summary
