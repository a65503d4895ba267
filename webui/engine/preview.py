"""Cheap previews of latents during sampling: a fixed linear map from the 4 latent channels to RGB."""

from __future__ import annotations

import torch
from PIL import Image

from .pipelines.images import to_images

# Least-squares fit of SD 1.x/2.x latents to RGB (the "approx cheap" factors the established tools use).
SD_LATENT_RGB = torch.tensor([
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
])


def latent_preview(latents: torch.Tensor, scale: int = 8) -> list[Image.Image]:
    """(B, 4, h, w) scaled latents -> RGB images of (w*scale, h*scale)."""
    # (B, 4, h, w) x (4, 3) -> (B, 3, h, w)
    rgb = torch.einsum("bchw,cr->brhw", latents[:, :4].float().cpu(), SD_LATENT_RGB)
    images = to_images(rgb)
    if scale == 1:
        return images
    return [im.resize((im.width * scale, im.height * scale), Image.BILINEAR) for im in images]
