"""SIGReg: a regulariser that holds embeddings to an isotropic standard Gaussian, so that an encoder
trained end to end with its predictor cannot collapse (JEPA-style world models such as LeWM pair a
next-embedding loss with such a regulariser, shared/notes/anchors-pusht.md; it replaces
`encoder_anchor_loss` when the encoder learns from scratch, `training.encoder_regularizer=sigreg`).

A distribution is isotropic Gaussian exactly when every one-dimensional projection of it is a
standard normal (Cramer-Wold). So the embeddings are projected on random unit directions, drawn
anew each step, and each projection is compared with N(0, 1) by the Epps-Pulley statistic: the
weighted squared distance between the sample's empirical characteristic function and the normal's,

    EP(x_1..x_n) = integral over t of |(1/n) sum_j exp(i t x_j) - exp(-t^2/2)|^2 exp(-t^2/2) dt,

integrated by the trapezoid rule on [-T, T] (symmetric, so twice [0, T]). It is smooth in every
x_j, costs O(n) per direction (unlike moment matching it sees every moment at once), and is
bounded, so one outlier cannot dominate. Unlike the test statistic proper it is not multiplied by
n: the loss then means the same at any batch size.
"""

from __future__ import annotations

import math

import torch

# the Gaussian weight exp(-t^2/2) is below 4e-4 beyond |t| = 4; with 17 knots the quadrature lies
# within 2e-4 of the closed form (a collapsed sample, the worst case, loses the tail beyond 4)
T_MAX = 4.0
KNOTS = 17


def epps_pulley(projections: torch.Tensor, t_max: float = T_MAX, knots: int = KNOTS) -> torch.Tensor:
    """projections (n, m): n samples of m one-dimensional variables -> (m,) the Epps-Pulley distance
    of each column's sample from N(0, 1), as the module docstring defines it."""
    t = torch.linspace(0.0, t_max, knots, device=projections.device, dtype=torch.float32)
    x = projections.float().unsqueeze(-1) * t  # (n, m, k)
    real = torch.cos(x).mean(0) - torch.exp(-t.pow(2) / 2)  # the normal's characteristic function is real
    imaginary = torch.sin(x).mean(0)
    integrand = (real.pow(2) + imaginary.pow(2)) * torch.exp(-t.pow(2) / 2)  # (m, k)
    return 2 * torch.trapezoid(integrand, t, dim=-1)


def epps_pulley_closed_form(sample: torch.Tensor) -> torch.Tensor:
    """The same distance for one sample (n,), integrated exactly over the whole line (O(n^2); the
    reference the quadrature is tested against):
    sqrt(2 pi)/n^2 sum_jk exp(-(x_j - x_k)^2 / 2) - 2 sqrt(pi)/n sum_j exp(-x_j^2 / 4) + sqrt(2 pi / 3)."""
    x = sample.double()
    n = x.numel()
    pairs = torch.exp(-(x[:, None] - x[None, :]).pow(2) / 2).sum() / n**2
    cross = torch.exp(-x.pow(2) / 4).sum() / n
    return math.sqrt(2 * math.pi) * pairs - 2 * math.sqrt(math.pi) * cross + math.sqrt(2 * math.pi / 3)


def sigreg_loss(embeddings: torch.Tensor, directions: int = 256, generator: torch.Generator | None = None) -> torch.Tensor:
    """embeddings (n, d) -> the mean Epps-Pulley distance from N(0, 1) of their projections on
    `directions` random unit vectors of R^d (drawn from `generator`, or the global generator of the
    embeddings' device)."""
    if embeddings.dim() != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"sigreg_loss needs embeddings of shape (n >= 2, d), got {tuple(embeddings.shape)}")
    d = embeddings.shape[1]
    if generator is None:
        unit = torch.randn(d, directions, device=embeddings.device)
    else:
        unit = torch.randn(d, directions, generator=generator).to(embeddings.device)
    unit = unit / unit.norm(dim=0, keepdim=True)
    with torch.autocast(embeddings.device.type, enabled=False):  # cos(t x) needs x to float32's precision
        return epps_pulley(embeddings.float() @ unit).mean()
