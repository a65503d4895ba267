"""Denoisers whose exact answers are known, for testing samplers without a network.

Data x0 ~ N(mu, s^2) per element. At noise level sigma the optimal denoiser is
E[x0 | x] = mu + s^2 / (s^2 + sigma^2) * (x - mu), and the probability-flow ODE maps a start
x(sigma_max) exactly to x(sigma) = mu + sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_max^2) * (x(sigma_max) - mu).
"""

from __future__ import annotations

import torch


class GaussianDenoiser:
    def __init__(self, mu: float = 0.5, s: float = 0.7) -> None:
        self.mu, self.s = mu, s
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        self.calls += 1
        sigma = sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        return self.mu + self.s**2 / (self.s**2 + sigma**2) * (x - self.mu)

    def ode_solution(self, x_start: torch.Tensor, sigma_start: float, sigma_end: float = 0.0) -> torch.Tensor:
        """Where the exact probability-flow ODE takes x_start from sigma_start to sigma_end."""
        ratio = ((self.s**2 + sigma_end**2) / (self.s**2 + sigma_start**2)) ** 0.5
        return self.mu + ratio * (x_start - self.mu)
