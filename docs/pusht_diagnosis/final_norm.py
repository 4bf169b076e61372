"""Can the predictor's final LayerNorm output the tokens it must predict? (CPU, about 30 s)

DINO-WM's predictor ends in a LayerNorm (spec 3.6). Its output token y (width D: visual,
proprio, then action features) is gamma * n + beta, where n has mean 0 and mean square 1 over
the D features. The action features are not part of the loss and are free. So a target token
can be output exactly only if its normalised visual and proprio features n_i = (t_i - beta_i) /
gamma_i, with sum S and sum of squares Q, leave room for the free features:
Q + S^2 / (free features) <= D. DINOv2's patch tokens come out of DINOv2's own final LayerNorm and
fit. An encoder head without an output norm makes tokens of any norm.

For windows of a dataset split this script reports:
- the share of target tokens that cannot be output;
- the error a perfect predictor behind this LayerNorm would still make: each such token is shrunk
  onto the feasible boundary, an upper bound on the nearest feasible output's error;
- the model's own one-step (teacher-forced) error on feasible and infeasible tokens;
- where the infeasible tokens lie: near the block, near the agent;
- for a norm with one gain and no shift, the share of tokens it cannot output at gains 1.73-7,
  with the targets as they are and scaled by 4 (what `encoder_output_scale=4` does).

Usage: python docs/pusht_diagnosis/final_norm.py DATA [MODEL=pusht] [SPLIT=val] [WINDOWS=256]
(DATA: `wmquant data --env pusht --out DATA ...`; MODEL: a shipped name or a model directory). It
prints one JSON object. A model without a final LayerNorm (`model.predictor.final_norm: false`)
has no constraint; its errors are reported all the same.
"""
import json
import sys

import torch
from torch import nn

from wmquant.data import load_dataset
from wmquant.models.checkpoint import load_world_model
from wmquant.training.batches import EpisodeTensors, WindowSampler

#: The env's canvas (px) and the encoder's patch grid of the 64 px PushT models.
CANVAS, GRID = 512.0, 8


def main() -> None:
    data = sys.argv[1]
    model_name = sys.argv[2] if len(sys.argv) > 2 else "pusht"
    split = sys.argv[3] if len(sys.argv) > 3 else "val"
    windows = int(sys.argv[4]) if len(sys.argv) > 4 else 256
    torch.manual_seed(0)
    model, config = load_world_model(model_name)
    sampler = WindowSampler(EpisodeTensors.from_dataset(load_dataset("pusht", data, split=split)),
                            model.num_hist + 1, int(config["model"]["frameskip"]), seed=1)
    visual_end, obs_end = model.visual_dim, model.visual_dim + model.proprio_dim
    with torch.no_grad():
        batch = sampler.sample(windows, int(config["model"]["img_size"]))
        z = model.encode({"visual": batch["visual"], "proprio": batch["proprio"]}, batch["actions"])
        target, newest = z[:, -1], z[:, -2]
        predicted = model.predict(z[:, : model.num_hist])[:, -1]
    error = ((predicted[..., :visual_end] - target[..., :visual_end]) ** 2).sum(-1)  # (windows, patches)
    copy_error = ((newest[..., :visual_end] - target[..., :visual_end]) ** 2).sum(-1)
    norm = model.predictor.norm
    report = {"model": str(model_name), "data": data, "split": split, "windows": windows,
              "final_norm": isinstance(norm, nn.LayerNorm),
              "one_step_error_per_token": float(error.mean()), "copy_error_per_token": float(copy_error.mean())}
    # where each target token lies: its patch centre's distance (in patches) to the block and the agent
    centres = (torch.arange(GRID) + 0.5) * CANVAS / GRID
    rows, cols = torch.meshgrid(centres, centres, indexing="ij")
    grid = torch.stack([cols.flatten(), rows.flatten()], -1)
    states = batch["states"][:, -1]
    near_block = (grid[None] - states[:, None, 2:4]).norm(dim=-1) <= 1.5 * CANVAS / GRID
    near_agent = (grid[None] - states[:, None, 0:2]).norm(dim=-1) <= 1.0 * CANVAS / GRID
    report["one_step_error_near_block"] = float(error[near_block].mean())
    report["one_step_error_elsewhere"] = float(error[~near_block].mean())
    if isinstance(norm, nn.LayerNorm):
        gain, shift = norm.weight.detach(), norm.bias.detach()
        width, free = gain.numel(), gain.numel() - obs_end
        normalised = (target[..., :obs_end] - shift[:obs_end]) / gain[:obs_end]
        need = (normalised**2).sum(-1) + normalised.sum(-1) ** 2 / free
        infeasible = need > width
        shrink = torch.clamp(torch.sqrt(width / need), max=1.0)
        floor = (((1 - shrink)[..., None] * (target[..., :visual_end] - shift[:visual_end])) ** 2).sum(-1)
        report.update({
            "infeasible_share": float(infeasible.float().mean()),
            "infeasible_share_near_block": float(infeasible[near_block].float().mean()),
            "infeasible_share_elsewhere": float(infeasible[~near_block].float().mean()),
            "infeasible_tokens_near_block": float((infeasible & near_block).sum() / infeasible.sum().clamp(min=1)),
            "infeasible_tokens_near_agent": float((infeasible & near_agent).sum() / infeasible.sum().clamp(min=1)),
            "tokens_near_block": float(near_block.float().mean()),
            "tokens_near_agent": float(near_agent.float().mean()),
            "one_step_error_feasible": float(error[~infeasible].mean()),
            "one_step_error_infeasible": float(error[infeasible].mean()) if infeasible.any() else None,
            "floor_per_infeasible_token": float(floor[infeasible].mean()) if infeasible.any() else None,
            "floor_share_of_error": float(floor.sum() / error.sum()),
            "target_sq_norm_feasible": float((target[..., :visual_end] ** 2).sum(-1)[~infeasible].mean()),
            "target_sq_norm_infeasible": float((target[..., :visual_end] ** 2).sum(-1)[infeasible].mean())
            if infeasible.any() else None,
            "gain_mean_abs_visual": float(gain[:visual_end].abs().mean()),
        })
    # What the latent's scale (`encoder_output_scale`) asks of the gain: the share of tokens that no
    # LayerNorm with one gain for all features and no shift can output, targets as they are and x4
    sweep = {}
    width, free = target.shape[-1], target.shape[-1] - obs_end
    for scale in (1.0, 4.0):
        scaled = target[..., :obs_end].clone()
        scaled[..., :visual_end] *= scale
        for uniform_gain in (1.73, 2.5, 4.0, 7.0):
            n = scaled / uniform_gain
            need = (n**2).sum(-1) + n.sum(-1) ** 2 / free
            sweep[f"latent_x{scale:g}_gain_{uniform_gain:g}"] = float((need > width).float().mean())
    report["infeasible_share_by_uniform_gain"] = sweep
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
