"""Random-weight checkpoints in the ORIGINAL single-file layouts, small enough for CPU tests.

Every tensor is random (norm weights near 1, everything else scaled by 1/sqrt(fan_in)), including
layers the reference initialises to zero, so a dropped branch changes the output and cannot pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import CLIPTextConfig, CLIPTextModel

from webui.engine.models.specs import SD_LATENT_SCALE, SDXL_LATENT_SCALE, UNetConfig, VAEConfig
from webui.engine.models.unet import UNetModel
from webui.engine.models.vae import AutoencoderKL

TEXT_WIDTH = 64  # 1 head of 64 channels, as the heads = width // 64 rule infers
# Reduced SDXL text encoders: CLIP-L 64 wide, bigG 128 wide with a NON-square projection to 96 (the
# real one is square), so a transposed text_projection cannot pass unnoticed.
SDXL_CLIP_L = dict(width=64, layers=3)
SDXL_BIGG = dict(width=128, layers=3, projection=96)
SDXL_FULL_CLIP_L = dict(width=768, layers=12)
SDXL_FULL_BIGG = dict(width=1280, layers=32, projection=1280)
SDXL_PREFIXES = {  # text encoder prefixes of the original files
    "clip_l": "conditioner.embedders.0.transformer.",
    "bigg": "conditioner.embedders.1.model.",
    "refiner_bigg": "conditioner.embedders.0.model.",
}


@dataclass(frozen=True)
class Recipe:
    family: str  # "sd1", "sd2", "sdxl" or "sdxl_refiner"
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


def sdxl_text_sizes(recipe: Recipe) -> tuple[dict | None, dict]:
    """(CLIP-L, bigG) sizes of an SDXL recipe; the refiner has no CLIP-L."""
    clip_l, bigg = (SDXL_FULL_CLIP_L, SDXL_FULL_BIGG) if recipe.full_size else (SDXL_CLIP_L, SDXL_BIGG)
    return (None if recipe.family == "sdxl_refiner" else clip_l), bigg


def sdxl_unet_config(recipe: Recipe) -> UNetConfig:
    """sgm's SDXL base / refiner UNets, or reduced ones with the same structure."""
    clip_l, bigg = sdxl_text_sizes(recipe)
    context = bigg["width"] + (clip_l["width"] if clip_l else 0)
    refiner = recipe.family == "sdxl_refiner"
    adm = bigg["projection"] + 256 * (5 if refiner else 6)  # pooled + size (and aesthetic) embeddings
    if recipe.full_size and refiner:  # 2560 = 1280 + 5 x 256
        return UNetConfig(recipe.in_channels, 4, 384, (1, 2, 4, 4), 2, (False, True, True, False), (0, 4, 4, 0), 4,
                          context, None, 64, True, adm)
    if recipe.full_size:  # 2816 = 1280 + 6 x 256
        return UNetConfig(recipe.in_channels, 4, 320, (1, 2, 4), 2, (False, True, True), (0, 2, 10), 10,
                          context, None, 64, True, adm)
    if refiner:  # four levels, attention on the middle two, one depth throughout
        return UNetConfig(recipe.in_channels, 4, 64, (1, 2, 2, 2), 2, (False, True, True, False), (0, 2, 2, 0), 2,
                          context, None, 64, True, adm)
    # no attention at the top level, depth growing downwards; the middle block as deep as the last level
    return UNetConfig(recipe.in_channels, 4, 64, (1, 2, 2), 2, (False, True, True), (0, 1, 2), 2,
                      context, None, 64, True, adm)


def unet_config(recipe: Recipe) -> UNetConfig:
    if recipe.family in ("sdxl", "sdxl_refiner"):
        return sdxl_unet_config(recipe)
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
    scale = SDXL_LATENT_SCALE if recipe.family in ("sdxl", "sdxl_refiner") else SD_LATENT_SCALE
    if recipe.full_size:
        return VAEConfig(scale_factor=scale)
    return VAEConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1, scale_factor=scale)


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


def openclip_text_shapes(width: int, layers: int, projection: int | None = None) -> dict[str, tuple[int, ...]]:
    """The OpenCLIP text tower layout of SD 2 / SDXL files (`in_proj_weight` rows are [q; k; v])."""
    shapes: dict[str, tuple[int, ...]] = {
        "token_embedding.weight": (49408, width),
        "positional_embedding": (77, width),
        "ln_final.weight": (width,),
        "ln_final.bias": (width,),
        "text_projection": (width, projection or width),  # applied as x @ P
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
    return shapes


def openclip_text_state_dict(width: int, layers: int, seed: int, projection: int | None = None) -> dict[str, torch.Tensor]:
    """Random weights in the OpenCLIP text tower layout (see `openclip_text_shapes`)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = openclip_text_shapes(width, layers, projection)
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
    if recipe.family in ("sdxl", "sdxl_refiner"):
        sd.update(sdxl_text_state_dict(recipe, seed + 2))
        return sd  # sgm-saved files carry no schedule buffers
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


def sdxl_text_state_dict(recipe: Recipe, seed: int) -> dict[str, torch.Tensor]:
    """SDXL's text encoders under their original prefixes: CLIP-L (HF naming) and OpenCLIP bigG."""
    clip_l, bigg = sdxl_text_sizes(recipe)
    sd = {}
    if clip_l is not None:
        for k, v in clip_text_state_dict(clip_l["width"], clip_l["layers"], seed).items():
            sd[SDXL_PREFIXES["clip_l"] + k] = v
    prefix = SDXL_PREFIXES["refiner_bigg" if clip_l is None else "bigg"]
    for k, v in openclip_text_state_dict(bigg["width"], bigg["layers"], seed + 1, bigg["projection"]).items():
        sd[prefix + k] = v
    return sd


def checkpoint_shapes(recipe: Recipe) -> dict[str, tuple[int, ...]]:
    """Key -> shape of `make_checkpoint(recipe)` without any data (for full-size SDXL: 10 GB of weights)."""
    with torch.device("meta"):
        unet, vae = UNetModel(unet_config(recipe)), AutoencoderKL(vae_config(recipe))
    shapes = {"model.diffusion_model." + k: tuple(v.shape) for k, v in unet.state_dict().items()}
    shapes.update({"first_stage_model." + k: tuple(v.shape) for k, v in vae.state_dict().items()})
    assert recipe.family in ("sdxl", "sdxl_refiner"), "SD 1/2 shapes: use shapes_of(make_checkpoint(recipe))"
    clip_l, bigg = sdxl_text_sizes(recipe)
    if clip_l is not None:
        config = CLIPTextConfig(hidden_size=clip_l["width"], intermediate_size=4 * clip_l["width"],
                                num_hidden_layers=clip_l["layers"], num_attention_heads=clip_l["width"] // 64,
                                max_position_embeddings=77, vocab_size=49408)
        with torch.device("meta"):
            text = CLIPTextModel(config)
        for k, v in text.state_dict().items():
            key = k if k.startswith("text_model.") else "text_model." + k
            shapes[SDXL_PREFIXES["clip_l"] + key] = tuple(v.shape)
        shapes[SDXL_PREFIXES["clip_l"] + "text_model.embeddings.position_ids"] = (1, 77)
    prefix = SDXL_PREFIXES["refiner_bigg" if clip_l is None else "bigg"]
    for k, v in openclip_text_shapes(bigg["width"], bigg["layers"], bigg["projection"]).items():
        shapes[prefix + k] = v
    return shapes


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


def sgm_original_config(unet: UNetConfig, vae: VAEConfig) -> dict:
    """The sgm .yaml config (as a dict) of an SDXL base/refiner: `network_config` with the "sequential"
    class embedding of width `adm_in_channels`, as diffusers' converters read it."""
    ldm = ldm_original_config(unet, vae)["model"]["params"]
    network = dict(ldm["unet_config"]["params"], num_classes="sequential", adm_in_channels=unet.adm_in_channels)
    depths = {d for d, a in zip(unet.transformer_depth, unet.attention_levels) if a} | {unet.transformer_depth_middle}
    if len(depths) == 1:  # the refiner's yaml: one depth for every level and the middle block (diffusers reads it so)
        network["transformer_depth"] = depths.pop()
    return {"model": {"params": {
        "network_config": {"params": network},
        "first_stage_config": ldm["first_stage_config"],
        "scale_factor": vae.scale_factor,
    }}}


def tiny_dpt(seed: int = 1):
    """A DPT depth estimator (transformers' `DPTForDepthEstimation`) at a tiny size, every weight random (a
    random DPT's ReLU head would otherwise give zeros, which would test nothing)."""
    from transformers import DPTConfig, DPTForDepthEstimation

    config = DPTConfig(hidden_size=32, num_hidden_layers=4, backbone_out_indices=[0, 1, 2, 3], num_attention_heads=4,
                       intermediate_size=37, image_size=64, patch_size=16, neck_hidden_sizes=[16, 16, 32, 32],
                       fusion_hidden_size=16)
    model = DPTForDepthEstimation(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            randomize_(tensor, name, gen)
    return model


def save_tiny_dpt(folder, seed: int = 1) -> None:
    """`tiny_dpt` saved as a models/depth/<name> folder, with a 64 x 64 image processor."""
    from transformers import DPTImageProcessorPil

    tiny_dpt(seed).save_pretrained(folder, safe_serialization=True)
    DPTImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(folder)
