"""Session-wide test setup.

Without a GPU, Triton's kernels can still be checked in its interpreter, which runs them on CPU
tensors with numpy. Triton reads TRITON_INTERPRET when it is imported (its standard library's
functions are wrapped then), so the switch is set here, before any test module imports it. With
CUDA the kernels are compiled and run on the device as in use.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
