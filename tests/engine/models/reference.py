"""diffusers as the numerical reference: the same original-layout weights, mapped by diffusers' own converters."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL as DiffusersVAE
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_open_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    create_unet_diffusers_config_from_ldm,
    create_vae_diffusers_config_from_ldm,
)

from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from .tiny_checkpoints import Recipe, ldm_original_config, sgm_original_config, unet_config, vae_config


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


def reference_text_encoder(file: dict[str, torch.Tensor], width: int, layers: int, act: str, openclip: bool) -> CLIPTextModel:
    """diffusers' conversion of `file` into a locally configured CLIPTextModel (eager attention)."""
    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
        num_attention_heads=width // 64, max_position_embeddings=77, hidden_act=act, layer_norm_eps=1e-5,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1, attn_implementation="eager",
    )
    model = CLIPTextModel(config).eval()
    if openclip:
        converted = convert_open_clip_checkpoint(model, file, prefix="cond_stage_model.model.")
    else:
        converted = convert_ldm_clip_checkpoint(file)
    if not hasattr(model, "text_model"):  # as create_diffusers_clip_model_from_ldm does
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    # strict=False: the SD 2 file's last block and the SD 1 position_ids are not part of the model.
    missing, _unexpected = model.load_state_dict(converted, strict=False)
    assert not missing
    return model


def reference_sdxl_unet(checkpoint: dict[str, torch.Tensor], recipe: Recipe) -> UNet2DConditionModel:
    """diffusers' SDXL UNet (addition_embed_type "text_time") from sgm's config and the original-layout weights."""
    original = sgm_original_config(unet_config(recipe), vae_config(recipe))
    config = create_unet_diffusers_config_from_ldm(original, checkpoint)
    # diffusers picks "text_time" from the context width alone (2048 or 1280, the full-size models);
    # at reduced widths we set the same three entries it would set.
    config.update(class_embed_type=None, addition_embed_type="text_time", addition_time_embed_dim=256)
    with torch.device("meta"):
        model = UNet2DConditionModel(**config)
    model.load_state_dict(convert_ldm_unet_checkpoint(checkpoint, config), strict=True, assign=True)
    return model.eval()


def reference_bigg(file: dict[str, torch.Tensor], prefix: str, width: int, layers: int, projection: int
                   ) -> CLIPTextModelWithProjection:
    """diffusers' conversion of an SDXL OpenCLIP bigG into CLIPTextModelWithProjection (eager attention)."""
    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
        num_attention_heads=width // 64, max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5,
        projection_dim=projection, bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
        attn_implementation="eager",
    )
    model = CLIPTextModelWithProjection(config).eval()
    converted = convert_open_clip_checkpoint(model, file, prefix=prefix)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return model


def reference_clip_l(file: dict[str, torch.Tensor], prefix: str, width: int, layers: int) -> CLIPTextModel:
    """diffusers' conversion of SDXL's CLIP-L (HF naming under `prefix`) into a CLIPTextModel."""
    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
        num_attention_heads=width // 64, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1, attn_implementation="eager",
    )
    model = CLIPTextModel(config).eval()
    converted = convert_ldm_clip_checkpoint({k: v for k, v in file.items() if k.startswith(prefix)}, prefix)
    if not hasattr(model, "text_model"):
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    missing, _unexpected = model.load_state_dict(converted, strict=False)  # position_ids: not a parameter
    assert not missing
    return model
