"""Random-weight ControlNets in the original (`control_model.*`) and diffusers layouts, for tiny test models."""

from __future__ import annotations

from dataclasses import replace

import torch
from diffusers import ControlNetModel
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint, create_unet_diffusers_config_from_ldm

from extensions.builtin.controlnet.network import ControlNet, ControlNetConfig

from ....engine.models.tiny_checkpoints import (
    Recipe, ldm_original_config, random_state_dict_meta, sgm_original_config, unet_config, vae_config,
)


def controlnet_config(recipe: Recipe) -> ControlNetConfig:
    """A ControlNet for the base model of `recipe` (it reads the 4 latent channels, whatever the variant)."""
    unet = replace(unet_config(recipe), in_channels=4, out_channels=4)
    family = {"sd1": "sd1", "sd2": "sd2", "sdxl": "sdxl"}[recipe.family]
    convs = ((3, 16), (16, 16), (16, 32), (32, 32), (32, 96), (96, 96), (96, 256), (256, unet.model_channels))
    return ControlNetConfig(unet, family, convs)


def make_controlnet(recipe: Recipe, seed: int = 0, prefix: str = "control_model.") -> dict[str, torch.Tensor]:
    """Every tensor random (the zero convolutions too, so a dropped residual cannot pass unnoticed)."""
    with torch.device("meta"):
        network = ControlNet(controlnet_config(recipe))
    return {prefix + k: v for k, v in random_state_dict_meta(network, seed).items()}


def reference_controlnet(original: dict[str, torch.Tensor], recipe: Recipe) -> ControlNetModel:
    """diffusers' ControlNetModel with the same weights, mapped by diffusers' own converter."""
    cfg = controlnet_config(recipe)
    sdxl = recipe.family == "sdxl"
    config = (sgm_original_config if sdxl else ldm_original_config)(cfg.unet, vae_config(recipe))
    unet = create_unet_diffusers_config_from_ldm(config, original)
    # What create_controlnet_diffusers_config_from_ldm takes from the UNet's config (in diffusers 0.42 it
    # calls the UNet's without the checkpoint and fails, so it is done here).
    names = ("in_channels", "down_block_types", "block_out_channels", "layers_per_block", "cross_attention_dim",
             "attention_head_dim", "use_linear_projection", "class_embed_type", "addition_embed_type",
             "addition_time_embed_dim", "projection_class_embeddings_input_dim", "transformer_layers_per_block")
    diffusers_config = {"conditioning_channels": cfg.hint_channels, **{n: unet.get(n) for n in names}}
    if sdxl:  # as for the SDXL UNet (tests/engine/models/reference.py): reduced widths need "text_time" set
        diffusers_config.update(class_embed_type=None, addition_embed_type="text_time", addition_time_embed_dim=256,
                                projection_class_embeddings_input_dim=cfg.unet.adm_in_channels)
    with torch.device("meta"):
        model = ControlNetModel(**diffusers_config)
    converted = convert_controlnet_checkpoint(original, diffusers_config)
    if sdxl:  # diffusers' ControlNet converter leaves out SDXL's `label_emb`; its UNet converter maps it so
        for linear, index in (("linear_1", 0), ("linear_2", 2)):
            for kind in ("weight", "bias"):
                converted[f"add_embedding.{linear}.{kind}"] = original[f"control_model.label_emb.0.{index}.{kind}"]
    model.load_state_dict(converted, strict=True, assign=True)
    return model.eval()


def diffusers_state_dict(original: dict[str, torch.Tensor], recipe: Recipe) -> dict[str, torch.Tensor]:
    """The same ControlNet in the diffusers layout (as diffusers saves it)."""
    return {k: v.contiguous() for k, v in reference_controlnet(original, recipe).state_dict().items()}
