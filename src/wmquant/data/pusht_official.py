"""Constants of the official `pusht_noise` dataset that wmquant's PushT data and statistics share."""

from __future__ import annotations

import torch

from ..envs import pusht as pusht_env
from .base import Normalization

PIXELS_PER_ACTION_UNIT = pusht_env.ACTION_SCALE

# Fixed statistics of `pusht_noise` that DINO-WM normalises with (spec 2.10); action statistics are
# for env units (px / 100).
NORMALIZATION = Normalization(
    action_mean=torch.tensor([-0.0087, 0.0068]),
    action_std=torch.tensor([0.2019, 0.2002]),
    proprio_mean=torch.tensor([236.6155, 264.5674, -2.93032027, 2.54307914]),
    proprio_std=torch.tensor([101.1202, 87.0112, 74.84556075, 74.14009094]),
    state_mean=torch.tensor([236.6155, 264.5674, 255.1307, 266.3721, 1.9584, -2.93032027, 2.54307914]),
    state_std=torch.tensor([101.1202, 87.0112, 52.7054, 57.4971, 1.7556, 74.84556075, 74.14009094]),
)
