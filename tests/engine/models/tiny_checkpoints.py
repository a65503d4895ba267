"""Random-weight checkpoints in the ORIGINAL single-file layouts, small enough for CPU tests.

Every tensor is random (norm weights near 1, everything else scaled by 1/sqrt(fan_in)), including
layers the reference initialises to zero, so a dropped branch changes the output and cannot pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import CLIPTextConfig, CLIPTextModel

from webui.engine.models.specs import UNetConfig, VAEConfig
from webui.engine.models.unet import UNetModel
from webui.engine.models.vae import AutoencoderKL

TEXT_WIDTH = 64  # 1 head of 64 channels, as the heads = width // 64 rule infers


@dataclass(frozen=True)
class Recipe:
    family: str  # "sd1" or "sd2"
    variant: str = "base"  # "base", "inpaint", "depth"
    full_size: bool = False

    @property
    def in_channels(self) -> int:
        return {"base": 4, "inpaint": 9, "depth": 5}[self.variant]


def randomize_(tensor: torch.Tensor, name: str, gen: torch.Generator) -> torch.Tensor:
    """Fill in place: 1-D weights are norm scales (about 1), biases small, matrices ~ 1/sqrt(fan_in)."""
    if not tensor.is_floating_point():
        return tensor
    noise = torch.randn(tensor.shape, generator=gen, dtype=torch.float32)
    if tensor.ndim == 1 and name.endswith("weight"):
        value = 1.0 + 0.1 * noise
    elif tensor.ndim == 1 or tensor.ndim == 0:
        value = 0.1 * noise
    else:
        fan_in = math.prod(tensor.shape[1:])
        value = noise / math.sqrt(fan_in)
    return tensor.copy_(value)


def unet_config(recipe: Recipe) -> UNetConfig:
    if recipe.full_size:
        sd2 = recipe.family == "sd2"
        return UNetConfig(
            recipe.in_channels, 4, 320, (1, 2, 4, 4), 2, (True, True, True, False), (1, 1, 1, 0), 1,
            1024 if sd2 else 768, None if sd2 else 8, 64 if sd2 else None, sd2,
        )
    if recipe.family == "sd1":  # 8 heads of 4 channels, conv projections
        return UNetConfig(recipe.in_channels, 4, 32, (1, 2, 2), 2, (True, True, False), (1, 1, 0), 1, TEXT_WIDTH)
    # SD 2: 64 channels per head, linear projections
    return UNetConfig(recipe.in_channels, 4, 64, (1, 2, 2), 1, (True, True, False), (1, 2, 0), 1, TEXT_WIDTH, None, 64, True)


def vae_config(recipe: Recipe) -> VAEConfig:
    if recipe.full_size:
        return VAEConfig()
    return VAEConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1)


def clip_text_state_dict(width: int, layers: int, seed: int) -> dict[str, torch.Tensor]:
    """HF CLIP naming as found in SD 1 files: `text_model.*` including `embeddings.position_ids`."""
    config = CLIPTextConfig(
        hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=max(1, width // 64),
        max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu",
    )
    with torch.device("meta"):
        model = CLIPTextModel(config)
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in model.state_dict().items():
        key = k if k.startswith("text_model.") else "text_model." + k
        if "position_ids" in key:
            continue
        sd[key] = randomize_(torch.empty(v.shape, dtype=v.dtype), key, gen)
    sd["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    return sd


def openclip_text_state_dict(width: int, layers: int, seed: int) -> dict[str, torch.Tensor]:
    """The OpenCLIP text tower layout of SD 2 files (`in_proj_weight` rows are [q; k; v])."""
    gen = torch.Generator().manual_seed(seed)
    shapes: dict[str, tuple[int, ...]] = {
        "token_embedding.weight": (49408, width),
        "positional_embedding": (77, width),
        "ln_final.weight": (width,),
        "ln_final.bias": (width,),
        "text_projection": (width, width),
        "logit_scale": (),
    }
    for i in range(layers):
        b = f"transformer.resblocks.{i}."
        shapes.update({
            b + "ln_1.weight": (width,), b + "ln_1.bias": (width,),
            b + "attn.in_proj_weight": (3 * width, width), b + "attn.in_proj_bias": (3 * width,),
            b + "attn.out_proj.weight": (width, width), b + "attn.out_proj.bias": (width,),
            b + "ln_2.weight": (width,), b + "ln_2.bias": (width,),
            b + "mlp.c_fc.weight": (4 * width, width), b + "mlp.c_fc.bias": (4 * width,),
            b + "mlp.c_proj.weight": (width, 4 * width), b + "mlp.c_proj.bias": (width,),
        })
    sd = {k: randomize_(torch.empty(s), k, gen) for k, s in shapes.items()}
    sd["positional_embedding"] = torch.randn((77, width), generator=gen) * 0.1
    sd["token_embedding.weight"] = torch.randn((49408, width), generator=gen) * 0.1
    return sd


def make_checkpoint(recipe: Recipe, seed: int = 0) -> dict[str, torch.Tensor]:
    """A whole single-file checkpoint state dict, keys exactly as in the original files."""
    with torch.device("meta"):
        unet, vae = UNetModel(unet_config(recipe)), AutoencoderKL(vae_config(recipe))
    sd = {}
    for k, v in random_state_dict_meta(unet, seed).items():
        sd["model.diffusion_model." + k] = v
    for k, v in random_state_dict_meta(vae, seed + 1).items():
        sd["first_stage_model." + k] = v
    width = (1024 if recipe.family == "sd2" else 768) if recipe.full_size else TEXT_WIDTH
    layers = (24 if recipe.family == "sd2" else 12) if recipe.full_size else 3
    if recipe.family == "sd1":
        for k, v in clip_text_state_dict(width, layers, seed + 2).items():
            sd["cond_stage_model.transformer." + k] = v
    else:
        for k, v in openclip_text_state_dict(width, layers, seed + 2).items():
            sd["cond_stage_model.model." + k] = v
    # The schedule buffers real files carry at top level.
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    sd["betas"] = betas.float()
    sd["alphas_cumprod"] = torch.cumprod(1 - betas, 0).float()
    return sd


def random_state_dict_meta(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Like `random_state_dict` for a module built on the meta device."""
    gen = torch.Generator().manual_seed(seed)
    return {k: randomize_(torch.empty(v.shape, dtype=torch.float32), k, gen) for k, v in module.state_dict().items()}


def shapes_of(sd: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def ldm_original_config(unet: UNetConfig, vae: VAEConfig, prediction: str = "eps") -> dict:
    """The LDM .yaml config (as a dict) that describes these networks, for diffusers' converters."""
    unet_params = {
        "in_channels": unet.in_channels,
        "out_channels": unet.out_channels,
        "model_channels": unet.model_channels,
        "channel_mult": list(unet.channel_mult),
        "num_res_blocks": unet.num_res_blocks,
        "attention_resolutions": [2**i for i, a in enumerate(unet.attention_levels) if a],
        "transformer_depth": [max(d, 1) for d in unet.transformer_depth],
        "context_dim": unet.context_dim,
        "use_linear_in_transformer": unet.use_linear_in_transformer,
    }
    if unet.num_head_channels:
        unet_params["num_head_channels"] = unet.num_head_channels
    else:
        unet_params["num_heads"] = unet.num_heads
    ddconfig = {
        "double_z": True, "z_channels": vae.z_channels, "resolution": 256, "in_channels": vae.in_channels,
        "out_ch": vae.out_ch, "ch": vae.ch, "ch_mult": list(vae.ch_mult), "num_res_blocks": vae.num_res_blocks,
        "attn_resolutions": [], "dropout": 0.0,
    }
    params = {
        "unet_config": {"params": unet_params},
        "first_stage_config": {"params": {"embed_dim": vae.embed_dim, "ddconfig": ddconfig}},
        "scale_factor": vae.scale_factor,
    }
    if prediction == "v":
        params["parameterization"] = "v"
    return {"model": {"params": params}}
