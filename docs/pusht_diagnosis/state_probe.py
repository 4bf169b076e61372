"""How precisely the PushT state can be read from the shipped model's 64-token latent.

Issue 14's screen adds a variant on DINO-WM's 14 x 14 patch grid (196 tokens from 112 px frames)
because at 64 px the agent is a 4 px disc inside one 8 px patch. This measures part of the premise:
probes of the agent position, the block position, the agent's position relative to the block (what
decides contact) and the block angle, fitted on frames of training episodes and read on frames of
validation episodes, from the shipped encoder's latent (64 tokens x 64 dims, flattened) and, as the
reference of what 64 px frames hold, from their pixels. A ridge probe
(`wmquant.diagnose.mechanisms.LinearProbe`) and a small MLP probe (two hidden layers of 512, AdamW),
on standardised inputs; the angle is read as (cos, sin). Positions are in the env's 512 px units.
The success test needs the agent's and the block's positions within 20 px jointly (a 4-D distance)
and the angle within 20 degrees.

Usage: python docs/pusht_diagnosis/state_probe.py DATA OUT.json [--encoder NAME=PATH ...] [--no-pixels]
[--train-every 4] [--val-every 2]
DATA is an expert set at 64 px (`wmquant data --env pusht --out DATA --episodes 400 --seed 1
--render-size 64 --video pth`); every 4th frame of its training episodes and every 2nd of its
validation episodes are used. `--encoder` adds an encoder of the shipped architecture (an
`encoder.safetensors` of `wmquant train ... stages=[encoder]`, or a model directory) beside the shipped
one; `--no-pixels` leaves out the pixel reference (its MLP probe takes about 4 minutes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch
from safetensors.torch import load_file

from wmquant.data import load_dataset
from wmquant.data.transforms import to_model_input
from wmquant.diagnose.mechanisms import LinearProbe
from wmquant.models import load_world_model

MLP_STEPS, MLP_BATCH, MLP_WIDTH = 3000, 256, 512


def frames_and_states(data: str, split: str, every: int) -> tuple[np.ndarray, np.ndarray]:
    dataset = load_dataset("pusht", data, split=split)
    frames, states = [], []
    for index in range(len(dataset)):
        episode = dataset.episode(index)
        frames.append(episode.visual[: len(episode)][::every].round().clamp(0, 255).to(torch.uint8))
        states.append(episode.states[: len(episode)][::every].double().numpy())
    return torch.cat(frames).numpy(), np.concatenate(states)


def targets(states: np.ndarray) -> np.ndarray:
    """agent x, y, block x, y (px), cos and sin of the block angle."""
    return np.concatenate([states[:, :4], np.cos(states[:, 4:5]), np.sin(states[:, 4:5])], axis=1)


def errors(predicted: np.ndarray, true: np.ndarray) -> dict[str, float]:
    agent = np.linalg.norm(predicted[:, :2] - true[:, :2], axis=1)
    block = np.linalg.norm(predicted[:, 2:4] - true[:, 2:4], axis=1)
    relative = np.linalg.norm((predicted[:, :2] - predicted[:, 2:4]) - (true[:, :2] - true[:, 2:4]), axis=1)
    angle = np.degrees(np.abs(np.remainder(np.arctan2(predicted[:, 5], predicted[:, 4])
                                           - np.arctan2(true[:, 5], true[:, 4]) + math.pi, 2 * math.pi) - math.pi))
    summary = {}
    for name, values in (("agent_px", agent), ("block_px", block), ("agent_minus_block_px", relative), ("angle_deg", angle)):
        summary[f"{name}_median"] = round(float(np.median(values)), 2)
        summary[f"{name}_p90"] = round(float(np.percentile(values, 90)), 2)
    return summary


def mlp_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int = 0) -> np.ndarray:
    torch.manual_seed(seed)
    mean_x, std_x = x_train.mean(0), x_train.std(0) + 1e-6
    mean_y, std_y = y_train.mean(0), y_train.std(0) + 1e-6
    x = torch.tensor((x_train - mean_x) / std_x, dtype=torch.float32)
    y = torch.tensor((y_train - mean_y) / std_y, dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], MLP_WIDTH), torch.nn.ReLU(), torch.nn.Linear(MLP_WIDTH, MLP_WIDTH),
                              torch.nn.ReLU(), torch.nn.Linear(MLP_WIDTH, y.shape[1]))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, MLP_STEPS)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(MLP_STEPS):
        pick = torch.randint(0, len(x), (MLP_BATCH,), generator=generator)
        loss = torch.nn.functional.mse_loss(net(x[pick]), y[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        predicted = net(torch.tensor((x_test - mean_x) / std_x, dtype=torch.float32)).double().numpy()
    return predicted * std_y + mean_y


def pixels(frames: np.ndarray) -> np.ndarray:
    """The frames themselves, as the reference of what 64 px hold."""
    return frames.reshape(len(frames), -1).astype(np.float64) / 127.5 - 1.0


@torch.no_grad()
def latents(frames: np.ndarray, encoder: str = "pusht") -> np.ndarray:
    """The flattened latents of an encoder: a model's (name or directory) or an encoder.safetensors
    loaded into the shipped model's architecture."""
    model, _ = load_world_model("pusht" if encoder.endswith(".safetensors") else encoder)
    if encoder.endswith(".safetensors"):
        model.encoder.load_state_dict(load_file(encoder))
    out = []
    for start in range(0, len(frames), 512):
        visual = to_model_input(torch.from_numpy(frames[start:start + 512]), model.encoder_img_size)
        out.append(model.encoder(model.resize_for_encoder(visual)).flatten(1).double().numpy())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--encoder", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--no-pixels", action="store_true")
    parser.add_argument("--train-every", type=int, default=4)
    parser.add_argument("--val-every", type=int, default=2)
    args = parser.parse_args()
    data, out, train_every, val_every = args.data, args.out, args.train_every, args.val_every
    torch.set_num_threads(2)
    start = time.perf_counter()
    train_frames, train_states = frames_and_states(data, "train", train_every)
    val_frames, val_states = frames_and_states(data, "val", val_every)
    y_train, y_val = targets(train_states), targets(val_states)
    print(f"{len(train_frames)} training frames, {len(val_frames)} validation frames", flush=True)
    sources = {"encoder latent, 64 tokens x 64 dims": lambda: (latents(train_frames), latents(val_frames))}
    for item in args.encoder:
        name, _, path = item.partition("=")
        sources[f"encoder latent, {name}"] = lambda path=path: (latents(train_frames, path), latents(val_frames, path))
    if not args.no_pixels:
        sources["pixels, 64 px"] = lambda: (pixels(train_frames), pixels(val_frames))
    report = {"data": data, "encoders": dict(item.partition("=")[::2] for item in args.encoder), "train_frames": len(train_frames), "val_frames": len(val_frames),
              "mlp": {"steps": MLP_STEPS, "batch": MLP_BATCH, "width": MLP_WIDTH}, "probes": {}}
    for name, features in sources.items():
        x_train, x_val = features()
        ridge = LinearProbe(x_train, y_train)
        report["probes"][name] = {
            "features": int(x_train.shape[1]),
            "ridge": errors(ridge.predict(x_val), y_val),
            "mlp": errors(mlp_probe(x_train, y_train, x_val), y_val),
        }
        print(name, json.dumps(report["probes"][name]), flush=True)
    report["seconds"] = round(time.perf_counter() - start, 1)
    with open(out + ".tmp", "w") as handle:
        json.dump(report, handle, indent=1)
    os.replace(out + ".tmp", out)
    print(f"wrote {out} ({report['seconds']} s)")


if __name__ == "__main__":
    main()
