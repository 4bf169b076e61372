"""Whether an encoder's latent distance, the planner's cost under a perfect predictor, ranks PushT
states the way the success test does.

Usage: python docs/pusht_diagnosis/latent_geometry.py DATA OUT.json [--encoder NAME=PATH ...] [--pixels] [--window 50] [--goal-every 5]

On the validation episodes of DATA (every frame), each goal is the frame g = t + 25 of a segment
starting at t (t every `--goal-every` steps, as the protocol draws its goals), and its candidates are
the other frames of the episode in [t, t + window). For every encoder (the shipped one, and each
`--encoder`: an `encoder.safetensors` of `wmquant train ... stages=[encoder]` or a model directory):
- `success_auc`: the probability that a candidate meeting the success test against the goal lies
  closer to it in the latent than one that does not (per goal with both kinds, then the mean);
- `spearman_margin`: the rank correlation of the latent distance with the success margin,
  max(||agent, block position difference|| / 20 px, angle difference / 20 degrees), which is below 1
  exactly when the success test passes (per goal, then the mean);
- `weights`: a least-squares fit of the squared latent distance over all (goal, candidate) pairs,
  d^2 ~ a |d agent|^2 + b |d block|^2 + c (d angle in degrees)^2, reported as b / a and c / a: how
  many px of agent movement one px of block movement, or one degree of turn, is worth to the cost.
  The success test weighs all three alike (1 and 1; 20 degrees count as 20 px).
Each measure is also given on the goals that need pushing (the block 5 px or more from where the
segment starts, as shared/notes splits the protocol's episodes), under `pushing`.
The latent distance is the mean over tokens of the squared distance, as the planning cost's; each
measure ignores the encoder's overall scale. `--pixels` adds the frames' own pixel distance as a
reference.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
from scipy.stats import rankdata, spearmanr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from state_probe import latents, pixels  # noqa: E402  (a sibling script: the same encoders, loaded the same way)

from wmquant.data import load_dataset  # noqa: E402
from wmquant.envs.pusht import SUCCESS_ANGLE_THRESHOLD, SUCCESS_POSITION_THRESHOLD, wrapped_angle_difference  # noqa: E402

GOAL_OFFSET = 25
PUSHING_PX = 5.0  # a goal needs pushing when the block lies this far or more from its start


def episodes(data: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(uint8 frames, states) of every validation episode."""
    dataset = load_dataset("pusht", data, split="val")
    out = []
    for index in range(len(dataset)):
        episode = dataset.episode(index)
        frames = episode.visual[: len(episode)].round().clamp(0, 255).byte().numpy()
        out.append((frames, episode.states[: len(episode)].double().numpy()))
    return out


def pairs(lengths: list[int], window: int, goal_every: int) -> list[tuple[int, int, np.ndarray]]:
    """(episode, goal time, candidate times) for every segment start t with t + 25 inside the episode."""
    out = []
    for index, length in enumerate(lengths):
        for start in range(0, length - GOAL_OFFSET, goal_every):
            goal = start + GOAL_OFFSET
            candidates = np.array([c for c in range(start, min(length, start + window)) if c != goal])
            out.append((index, goal, candidates))
    return out


def auc(scores_positive: np.ndarray, scores_negative: np.ndarray) -> float:
    """P(a positive scores below a negative), ties counting half (Mann-Whitney)."""
    ranks = rankdata(np.concatenate([scores_positive, scores_negative]))
    n_pos, n_neg = len(scores_positive), len(scores_negative)
    below = n_pos * n_neg + n_pos * (n_pos + 1) / 2 - ranks[:n_pos].sum()
    return float(below / (n_pos * n_neg))


def geometry(latent_by_episode: list[np.ndarray], states_by_episode: list[np.ndarray], segments) -> dict[str, float]:
    aucs, rhos, rows, targets = [], [], [], []
    for index, goal, candidates in segments:
        z, s = latent_by_episode[index], states_by_episode[index]
        distance = ((z[candidates] - z[goal]) ** 2).mean(axis=1)
        position = np.linalg.norm(s[candidates, :4] - s[goal, :4], axis=1)
        angle = wrapped_angle_difference(s[candidates, 4], s[goal, 4])
        margin = np.maximum(position / SUCCESS_POSITION_THRESHOLD, angle / SUCCESS_ANGLE_THRESHOLD)
        success = margin < 1
        if success.any() and (~success).any():
            aucs.append(auc(distance[success], distance[~success]))
        if np.ptp(distance) > 0 and np.ptp(margin) > 0:
            rhos.append(spearmanr(distance, margin).statistic)
        agent = ((s[candidates, :2] - s[goal, :2]) ** 2).sum(axis=1)
        block = ((s[candidates, 2:4] - s[goal, 2:4]) ** 2).sum(axis=1)
        rows.append(np.stack([agent, block, np.degrees(angle) ** 2], axis=1))
        targets.append(distance)
    a, b, c = np.linalg.lstsq(np.concatenate(rows), np.concatenate(targets), rcond=None)[0]
    return {"success_auc": round(float(np.mean(aucs)), 4), "goals_with_both": len(aucs),
            "spearman_margin": round(float(np.mean(rhos)), 4),
            "block_px_per_agent_px": round(float(math.sqrt(max(b, 0) / a)), 3) if a > 0 else None,
            "angle_deg_per_agent_px": round(float(math.sqrt(max(c, 0) / a)), 3) if a > 0 else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--encoder", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--pixels", action="store_true")
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--goal-every", type=int, default=5)
    args = parser.parse_args()
    started = time.perf_counter()
    data = episodes(args.data)
    segments = pairs([len(states) for _, states in data], args.window, args.goal_every)
    sources = {"shipped": "pusht", **dict(item.split("=", 1) for item in args.encoder)}
    states = [s for _, s in data]
    pushing = [(index, goal, candidates) for index, goal, candidates in segments
               if np.linalg.norm(states[index][goal, 2:4] - states[index][goal - GOAL_OFFSET, 2:4]) >= PUSHING_PX]
    report = {"data": args.data, "encoders": sources, "episodes": len(data), "goals": len(segments),
              "pushing_goals": len(pushing),
              "window": args.window, "goal_every": args.goal_every, "geometry": {}}
    features = {name: (lambda frames, path=path: latents(frames, path)) for name, path in sources.items()}
    if args.pixels:
        features["64 px frames"] = pixels
    for name, encode in features.items():
        flat = encode(np.concatenate([frames for frames, _ in data]))
        latent = np.split(flat, np.cumsum([len(s) for s in states])[:-1])
        report["geometry"][name] = geometry(latent, states, segments)
        report["geometry"][name]["pushing"] = geometry(latent, states, pushing)
        print(name, report["geometry"][name], flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(report, handle, indent=1)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
