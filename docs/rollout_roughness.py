"""How rough is `rollout`'s objective in its learned activation ranges? (docs/planning_aware.md,
"Training on a rough objective".)

Runs `wmquant quant ... method=rollout` up to the method's own computation: the FP planning pass
records the rollouts as usual, then, instead of training, this sets up the method's parameters at
their start (OMSE-initialised input ranges, weight clipping at 0.982), evaluates the objective's
terms over the recorded groups, and again with every range logit nudged by a small amount. Nothing
is quantized or written. With ROUGHNESS_LRS="5e-3 1e-3" it then runs the method's training from
that start once per learning rate, on the same recording, and prints each objective by epoch.
The method's options apply (`method_options.cost_term=centered` measures the centered cost term).

    [ROUGHNESS_LRS="5e-3 1e-3 2e-4"] python docs/rollout_roughness.py quant --config-name plan_wall.yaml \
        model_name=wall quant=true ... method=rollout
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys

import torch
import torch.nn.utils.parametrize as parametrize

from wmquant.cli import main
from wmquant.quant.layers import input_hook
from wmquant.quant.methods import rollout
from wmquant.quant.methods._rollouts import RolloutReplay, relative_error, rollout_loss

NUDGES = (1e-3, -1e-3, 1e-2, -1e-2)


class Measured(SystemExit):
    """Stops the command once the objective is measured."""


def objective_terms(model, replay: RolloutReplay, cost_weight: float) -> list[tuple[float, float, float]]:
    """(latent term, cost term, frames term) of every recorded group."""
    terms = []
    with torch.no_grad():
        frames = (float(relative_error(model.encode_obs(replay.frames), replay.frame_reference))
                  if replay.frames is not None else 0.0)
        for index, group in enumerate(replay.groups):
            start = replay.start(model, group)
            reference, scale = replay.references[index], replay.centered_cost_scale
            latent = float(rollout_loss(model, start, group.actions, reference, 0.0, scale))
            whole = float(rollout_loss(model, start, group.actions, reference, cost_weight, scale))
            terms.append((latent, whole - latent, frames))
    return terms


def report(label: str, terms: list[tuple[float, float, float]]) -> None:
    mean = [sum(t[k] for t in terms) / len(terms) for k in range(3)]
    groups = " ".join(f"{t[0] + t[1]:.3f}" for t in terms)
    print(f"{label:>14}  objective {sum(mean):.4f}  latent {mean[0]:.4f}  cost {mean[1]:.4f}  "
          f"frames {mean[2]:.4f}  per group (latent + cost): {groups}", flush=True)


def measure(self, model, qconfig, calib, options) -> None:
    untouched = copy.deepcopy(model)
    replay = RolloutReplay.with_options(model, calib, options)
    targets, _ = replay.split_targets(model, qconfig)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    ranges = {}
    for index, target in enumerate(t for t in targets if rollout._learns_input_range(t.scheme)):
        ranges[target.name] = learned = rollout._LearnedInputRange(target.scheme, options.seed + index)
        target.module.register_forward_pre_hook(input_hook(lambda _, x, r=learned: r(x)))
    replay.mean_loss(model)  # the float replay observes every learned range's input
    for learned in ranges.values():
        learned.start_learning(options.lwc_init)
    for target in targets:
        if target.scheme.quantizes_weights:
            clip = rollout._ClippedWeight(target.scheme, target.module.weight, options.lwc_init)
            parametrize.register_parametrization(target.module, "weight", clip, unsafe=True)
    logits = [p for learned in ranges.values() for p in (learned.low, learned.up)]
    start = [p.detach().clone() for p in logits]
    print(f"{len(ranges)} learned input ranges, {len(replay.groups)} recorded groups")
    report("start", objective_terms(model, replay, options.cost_weight))
    for nudge in NUDGES:
        with torch.no_grad():
            for p, value in zip(logits, start):
                p.copy_(value + nudge)
        report(f"logits {nudge:+g}", objective_terms(model, replay, options.cost_weight))
    for lr in os.environ.get("ROUGHNESS_LRS", "").split():
        trained = TRAIN(self, copy.deepcopy(untouched), qconfig, calib, dataclasses.replace(options, lr=float(lr)))
        history = ", ".join(f"{loss:.4f}" for loss in trained.report["loss_by_epoch"])
        print(f"lr {lr}: objective by epoch {history}; kept {trained.report['kept_loss']:.4f}", flush=True)
    raise Measured(0)


TRAIN = rollout.RolloutAware.transform

if __name__ == "__main__":
    rollout.RolloutAware.transform = measure
    sys.exit(main(sys.argv[1:]))
