"""diffusers as the numerical reference: the same original-layout weights, mapped by diffusers' own converters."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL as DiffusersVAE
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    create_unet_diffusers_config_from_ldm,
    create_vae_diffusers_config_from_ldm,
)

from .tiny_checkpoints import Recipe, ldm_original_config, unet_config, vae_config


def reference_unet(checkpoint: dict[str, torch.Tensor], recipe: Recipe) -> UNet2DConditionModel:
    original = ldm_original_config(unet_config(recipe), vae_config(recipe))
    config = create_unet_diffusers_config_from_ldm(original, checkpoint)
    with torch.device("meta"):
        model = UNet2DConditionModel(**config)
    model.load_state_dict(convert_ldm_unet_checkpoint(checkpoint, config), strict=True, assign=True)
    return model.eval()


def reference_vae(checkpoint: dict[str, torch.Tensor], recipe: Recipe) -> DiffusersVAE:
    original = ldm_original_config(unet_config(recipe), vae_config(recipe))
    config = create_vae_diffusers_config_from_ldm(original, checkpoint)
    with torch.device("meta"):
        model = DiffusersVAE(**config)
    model.load_state_dict(convert_ldm_vae_checkpoint(checkpoint, config), strict=True, assign=True)
    return model.eval()


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative max error: max|ours - ref| / max|ref|."""
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return ((ours.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
