"""One-step prediction error relative to the latents' own spread, so that models whose encoders
differ (trained with the world model, or end to end) compare: on validation windows of a dataset,
each model encodes the frames with its own encoder, predicts the next frame teacher-forced, and the
visual MSE is divided by the variance of its target latents over the windows (mean over token
positions and channels). An encoder that shrinks its latents lowers the MSE, not this ratio. The
same ratio for copying each frame's latent forward (the baseline of no dynamics) says how fast each
encoder's latents move.
Usage: python docs/pusht_diagnosis/one_step_error.py DATA MODEL [MODEL ...] [--windows 512]
(DATA: a `wmquant data --env pusht` directory; MODEL: shipped names or model directories; prints JSON)"""
import argparse
import json

import torch

from wmquant.data import load_dataset
from wmquant.models.checkpoint import load_world_model
from wmquant.training.batches import EpisodeTensors, WindowSampler


@torch.no_grad()
def relative_error(name: str, episodes: EpisodeTensors, windows: int) -> dict[str, float]:
    model, config = load_world_model(name)
    model.eval()
    sampler = WindowSampler(episodes, model.num_hist + model.num_pred, model.frameskip, seed=0)
    data = sampler.gather(*sampler.sample_indices(windows), int(config["model"]["img_size"]))
    z = model.encode({"visual": data["visual"], "proprio": data["proprio"]}, data["actions"])
    predicted = model.predict(z[:, : model.num_hist])[..., : model.visual_dim]
    target = z[:, model.num_pred :][..., : model.visual_dim]
    copied = z[:, : model.num_hist][..., : model.visual_dim]  # each target frame's predecessor, unchanged
    mse = (predicted - target).pow(2).mean().item()
    copy_mse = (copied - target).pow(2).mean().item()
    spread = target.flatten(0, 1).var(0).mean().item()
    return {"visual_mse": mse, "target_variance": spread, "relative_error": mse / spread,
            "copy_relative_error": copy_mse / spread}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("models", nargs="+")
    parser.add_argument("--windows", type=int, default=512)
    args = parser.parse_args()
    episodes = EpisodeTensors.from_dataset(load_dataset("pusht", args.data, split="val"))
    report = {"data": args.data, "windows": args.windows,
              "models": {name: relative_error(name, episodes, args.windows) for name in args.models}}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
