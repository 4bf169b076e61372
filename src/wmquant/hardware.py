"""Where a computation ran, in words, for the records that results and trainings keep."""

from __future__ import annotations

import torch


def describe_device(device: torch.device) -> str:
    """"cuda:0 (NVIDIA H100 80GB HBM3)" or "cpu (2 threads)"."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({torch.get_num_threads()} threads)"
