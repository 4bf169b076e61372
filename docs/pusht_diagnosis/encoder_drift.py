"""How far an encoder trained with the world model (`model.train_encoder`) moved from the one it
started from, on frames of a dataset's validation split.

For each model after the first (the start), on the same frames: the mean square of the token
change relative to the start's token variance over frames; the same after removing the change
common to all frames (one shift per token position and channel); and how the frame-to-frame
planning distances (`latent_distance`, between consecutive frames of the sample) compare, as the
median ratio and the correlation. The first number large and the second small means the tokens slid
together, which distances alone cannot see. For an encoder trained end to end (SIGReg) two more: its
latents' variance over frames relative to the start's (near 0: collapse), and the SIGReg distance of
its frames from an isotropic Gaussian (at scale 1, as trained), next to the start's
(`encoder_drift.json` was written before these two were added).
Usage: python docs/pusht_diagnosis/encoder_drift.py DATA START MODEL [MODEL ...] [--frames 400] [--every 8]
(DATA: a `wmquant data --env pusht` directory; START, MODEL: shipped names or model directories;
prints a JSON report)"""
import argparse
import json

import torch

from wmquant.data import load_dataset
from wmquant.data.transforms import to_model_input
from wmquant.models.checkpoint import load_world_model
from wmquant.training.encoder import latent_distance
from wmquant.training.sigreg import sigreg_loss


def sample_frames(data: str, count: int, every: int) -> torch.Tensor:
    """Every `every`-th frame of the validation episodes, in order, until `count` are taken."""
    dataset = load_dataset("pusht", data, split="val")
    taken, total = [], 0
    for index in range(len(dataset)):
        frames = dataset.episode(index).visual[::every]
        taken.append(frames)
        total += len(frames)
        if total >= count:
            break
    return torch.cat(taken)[:count]


@torch.no_grad()
def encode(name: str, frames: torch.Tensor) -> torch.Tensor:
    model, config = load_world_model(name)
    model.eval()
    return model.encoder(model.resize_for_encoder(to_model_input(frames, int(config["model"]["img_size"]))))


def frame_sigreg(latents: torch.Tensor) -> float:
    """SIGReg of frames (n, N, E), each flattened, with fixed directions."""
    return sigreg_loss(latents.flatten(1), generator=torch.Generator().manual_seed(0)).item()


def drift(start: torch.Tensor, moved: torch.Tensor) -> dict[str, float]:
    spread = (start - start.mean(0)).pow(2).mean()
    change = moved - start
    common = change.mean(0)  # per token position and channel, shared by every frame
    before, after = torch.arange(len(start) - 1), torch.arange(1, len(start))
    d_start, d_moved = latent_distance(start[before], start[after]), latent_distance(moved[before], moved[after])
    return {
        "token_change_over_variance": (change.pow(2).mean() / spread).item(),
        "token_change_over_variance_without_common_shift": ((change - common).pow(2).mean() / spread).item(),
        "distance_ratio_median": (d_moved / d_start).median().item(),
        "distance_correlation": torch.corrcoef(torch.stack([d_start, d_moved]))[0, 1].item(),
        "variance_over_frames_over_start": ((moved - moved.mean(0)).pow(2).mean() / spread).item(),
        "sigreg": frame_sigreg(moved),
        "sigreg_of_start": frame_sigreg(start),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("start")
    parser.add_argument("models", nargs="+")
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--every", type=int, default=8)
    args = parser.parse_args()
    frames = sample_frames(args.data, args.frames, args.every)
    start = encode(args.start, frames)
    report = {"data": args.data, "start": args.start, "frames": len(frames), "every": args.every,
              "models": {name: drift(start, encode(name, frames)) for name in args.models}}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
