"""SDXL's conditioning vector y: the pooled text embedding followed by embedded sizes (and, for the
refiner, the aesthetic score), as sgm's `GeneralConditioner` builds it:

    base:    [pooled | e(orig h) | e(orig w) | e(crop top) | e(crop left) | e(target h) | e(target w)]
    refiner: [pooled | e(orig h) | e(orig w) | e(crop top) | e(crop left) | e(aesthetic score)]

each e a 256-wide sinusoidal embedding [cos | sin] (max period 10000), height before width. Sizes left
at 0 in the request mean the size being generated, as the reference pipelines do (the hires pass uses
its own, larger size).
"""

from __future__ import annotations

import torch

from ..models.specs import SDXL_SCALAR_EMBED_DIM, ModelSpec
from ..models.unet import timestep_embedding
from ..request import GenerationRequest


def size_values(spec: ModelSpec, request: GenerationRequest, width: int, height: int, negative: bool) -> list[float]:
    """The numbers y embeds after the pooled text, for an image of `width` x `height`."""
    original = [request.sdxl_original_height or height, request.sdxl_original_width or width]
    crop = [request.sdxl_crop_top, request.sdxl_crop_left]
    if spec.family == "sdxl_refiner":
        return [*original, *crop, request.sdxl_negative_aesthetic_score if negative else request.sdxl_aesthetic_score]
    return [*original, *crop, request.sdxl_target_height or height, request.sdxl_target_width or width]


def sdxl_vector(spec: ModelSpec, pooled: torch.Tensor, request: GenerationRequest, width: int, height: int,
                negative: bool = False) -> torch.Tensor:
    """(B, pooled width) pooled text -> (B, adm_in_channels) y, in fp32."""
    values = torch.tensor(size_values(spec, request, width, height, negative), dtype=torch.float32, device=pooled.device)
    embedded = timestep_embedding(values, SDXL_SCALAR_EMBED_DIM).reshape(1, -1)  # (n, 256) -> (1, n * 256)
    return torch.cat([pooled.float(), embedded.expand(pooled.shape[0], -1)], dim=1)
