"""Seeded noise, drawn on the CPU so the same seed gives the same image on any device.

Each image of a batch owns a generator seeded with its own seed, so image i of a batch equals that
seed generated alone, for the starting noise and for every ancestral/SDE step's noise too.
Variation seeds blend a second noise in by spherical interpolation, as AUTOMATIC1111 does.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch

SEED_MAX = 2**32 - 1  # seeds are 32-bit, as in AUTOMATIC1111, so infotexts move between the tools


def resolve_seed(seed: int, rng: random.Random | None = None) -> int:
    """-1 (or any negative) means random: pick one now, so it can be reported and reused."""
    if seed is None or seed < 0:
        return (rng or random.SystemRandom()).randrange(SEED_MAX)
    return int(seed)


def slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from `low` (t=0) to `high` (t=1), normalising over dim 1 like A1111."""
    low_n = low / low.norm(dim=1, keepdim=True)
    high_n = high / high.norm(dim=1, keepdim=True)
    dot = (low_n * high_n).sum(1)
    if dot.mean() > 0.9995:  # nearly parallel: plain interpolation is exact enough and stable
        return low * (1 - t) + high * t
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - t) * omega) / so).unsqueeze(1) * low + (torch.sin(t * omega) / so).unsqueeze(1) * high


def seeded_noise(shape: Sequence[int], seed: int) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=torch.Generator("cpu").manual_seed(seed))


class ImageRNG:
    """Per-image noise for a batch: `first()` gives the starting noise, `next()` each later draw."""

    def __init__(
        self,
        shape: Sequence[int],
        seeds: Sequence[int],
        subseeds: Sequence[int] | None = None,
        subseed_strength: float = 0.0,
    ) -> None:
        self.shape = tuple(shape)  # (C, h, w) of one image
        self.seeds = list(seeds)
        self.subseeds = list(subseeds) if subseeds is not None else None
        self.subseed_strength = subseed_strength
        self.generators = [torch.Generator("cpu").manual_seed(s) for s in self.seeds]

    def first(self) -> torch.Tensor:
        """(B, C, h, w) starting noise; image i's comes from seed i (blended with subseed i)."""
        noises = []
        for i, generator in enumerate(self.generators):
            noise = torch.randn(self.shape, generator=generator)
            if self.subseeds is not None and self.subseed_strength != 0:
                noise = slerp(self.subseed_strength, noise, seeded_noise(self.shape, self.subseeds[i]))
            noises.append(noise)
        return torch.stack(noises)

    def next(self) -> torch.Tensor:
        """(B, C, h, w) further noise, continuing each image's own generator."""
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators])

    def noise_sampler(self, device: torch.device, dtype: torch.dtype) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The samplers' `noise_sampler(sigma, sigma_next)`, drawing from this RNG."""
        return lambda sigma, sigma_next: self.next().to(device=device, dtype=dtype)
