"""Training batches cut from a whole dataset held in memory.

Small-model datasets fit in memory as uint8 frames, so the trainer keeps every episode and cuts
windows by indexing, with no DataLoader workers. States, proprio and actions live on the training
device; the frames stay in host memory, and only a batch's frames are copied to the device. 2000
PushT expert episodes padded to 300 steps are 7.4 GB of 64 px frames and 22.6 GB at 112 px, which
would leave no room on one GPU for several trainings side by side, while a step's frames are tens
of MB. Windows follow DINO-WM's slicing (spec 3.8): `num_frames` frames `frameskip` apart; the
action attached to frame k is the concatenation of the `frameskip` raw actions executed after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.base import Normalization, TrajectoryDataset
from ..data.transforms import to_model_input
from ..errors import DatasetError


@dataclass
class EpisodeTensors:
    """All episodes of a split, padded to the longest; frames stay uint8, in host memory."""

    visual: torch.Tensor  # uint8 (E, T, 3, H, W), on the host: read them with `frames`
    proprio: torch.Tensor  # float32 (E, T, P), normalised
    actions: torch.Tensor  # float32 (E, T, A), normalised
    states: torch.Tensor  # float32 (E, T, S), raw
    lengths: torch.Tensor  # int64 (E,)

    @classmethod
    def from_dataset(cls, dataset: TrajectoryDataset, device: torch.device | str = "cpu") -> "EpisodeTensors":
        if len(dataset) == 0:
            raise DatasetError("the dataset split has no episodes")
        episodes = [dataset.episode(i) for i in range(len(dataset))]
        lengths = torch.tensor([len(ep) for ep in episodes])
        longest = int(lengths.max())
        first = episodes[0]
        channels, height, width = first.visual.shape[1:]
        norm: Normalization = dataset.normalization

        def pad(x: torch.Tensor) -> torch.Tensor:
            x = x[:longest]
            if x.shape[0] < longest:
                x = torch.cat([x, x[-1:].expand(longest - x.shape[0], *x.shape[1:])])
            return x

        visual = torch.empty((len(episodes), longest, channels, height, width), dtype=torch.uint8)
        for i, ep in enumerate(episodes):
            frames = ep.visual[: len(ep)]
            if frames.dtype != torch.uint8:
                frames = frames.round().clamp(0, 255).to(torch.uint8)
            visual[i] = pad(frames)
        proprio = torch.stack([pad(norm.normalize_proprio(ep.proprio[: len(ep)].float())) for ep in episodes])
        actions = torch.stack([pad(norm.normalize_actions(ep.actions[: len(ep)].float())) for ep in episodes])
        states = torch.stack([pad(ep.states[: len(ep)].float()) for ep in episodes])
        return cls(visual, proprio.to(device), actions.to(device), states.to(device), lengths.to(device))

    @property
    def device(self) -> torch.device:
        """The training device (where everything but the frames lives)."""
        return self.proprio.device

    def frames(self, episode: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """uint8 frames at index tensors `episode` and `time` (broadcast together), on the training device."""
        host = self.visual.device
        return self.visual[episode.to(host), time.to(host)].to(self.device)


class WindowSampler:
    """Random windows (episode, start) with a seeded generator, uniform over all valid windows."""

    def __init__(self, episodes: EpisodeTensors, num_frames: int, frameskip: int, seed: int = 0) -> None:
        span = num_frames * frameskip
        starts = (episodes.lengths - span + 1).clamp(min=0)  # windows per episode (spec 3.8: s = 0..T-span)
        if int(starts.sum()) == 0:
            raise DatasetError(
                f"no episode is long enough for {num_frames} frames {frameskip} steps apart ({span} steps); "
                f"longest episode: {int(episodes.lengths.max())} steps"
            )
        self.episodes = episodes
        self.num_frames = num_frames
        self.frameskip = frameskip
        self.window_counts = starts
        self.offsets = torch.cumsum(starts, 0) - starts
        self.total = int(starts.sum())
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    def sample_indices(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        flat = torch.randint(0, self.total, (batch_size,), generator=self.generator)
        episode = torch.searchsorted(self.offsets.cpu(), flat, right=True) - 1
        start = flat - self.offsets.cpu()[episode]
        return episode.to(self.episodes.device), start.to(self.episodes.device)

    def gather(self, episode: torch.Tensor, start: torch.Tensor, img_size: int, visual: bool = True) -> dict[str, torch.Tensor]:
        """A batch of windows: visual (B, F, 3, S, S) in [-1, 1] (left out with visual=False),
        proprio (B, F, P), actions (B, F, f*A), states (B, F, S_dim)."""
        f, frames = self.frameskip, self.num_frames
        ep = self.episodes
        frame_t = start[:, None] + f * torch.arange(frames, device=ep.device)[None]  # (B, F)
        raw_t = start[:, None] + torch.arange(frames * f, device=ep.device)[None]  # (B, F*f)
        actions = ep.actions[episode[:, None], raw_t]  # (B, F*f, A)
        data = {
            "proprio": ep.proprio[episode[:, None], frame_t],
            "actions": actions.reshape(len(episode), frames, -1),
            "states": ep.states[episode[:, None], frame_t],
        }
        if visual:
            data["visual"] = to_model_input(ep.frames(episode[:, None], frame_t), img_size)  # from uint8 (B, F, 3, H, W)
        return data

    def sample(self, batch_size: int, img_size: int) -> dict[str, torch.Tensor]:
        return self.gather(*self.sample_indices(batch_size), img_size)
