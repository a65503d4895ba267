"""The demo model's networks: SD 1.x's architecture at a small size, saved in SD 1.x's single-file layout.

Sizes were chosen from measured training speed on a 2-core CPU (see `train.py`): a 128x128 image is a
16x16x4 latent; the UNet keeps attention off the 16x16 level, where it costs most and adds least.
"""

from __future__ import annotations

import torch
from transformers import CLIPTextModel

from webui.engine.models.detection import SD1_TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX
from webui.engine.models.specs import SD_LATENT_SCALE, TextEncoderConfig, UNetConfig, VAEConfig
from webui.engine.models.text_encoders import _hf_config
from webui.engine.models.unet import UNetModel
from webui.engine.models.vae import AutoencoderKL

NATIVE_SIZE = 128
TEXT_WIDTH = 128  # 2 heads of 64, as the loader infers from the width

VAE_CONFIG = VAEConfig(ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1)  # 3 downsamplings: 8x smaller
UNET_CONFIG = UNetConfig(
    in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2, 4), num_res_blocks=1,
    attention_levels=(False, True, True), transformer_depth=(0, 1, 1), transformer_depth_middle=1,
    context_dim=TEXT_WIDTH,
)


def text_config(vocab_size: int) -> TextEncoderConfig:
    return TextEncoderConfig(
        layout="clip", prefix=SD1_TEXT_PREFIX, width=TEXT_WIDTH, layers=3, heads=TEXT_WIDTH // 64,
        mlp_width=4 * TEXT_WIDTH, vocab_size=vocab_size, pad_token_id=vocab_size - 1,
    )


def new_vae() -> AutoencoderKL:
    return AutoencoderKL(VAE_CONFIG)


def new_unet() -> UNetModel:
    unet = UNetModel(UNET_CONFIG)
    torch.nn.init.zeros_(unet.out[2].weight)  # start by predicting zero noise, as the reference does
    torch.nn.init.zeros_(unet.out[2].bias)
    return unet


def new_text_encoder(vocab_size: int) -> CLIPTextModel:
    cfg = text_config(vocab_size)
    return CLIPTextModel(_hf_config(cfg, cfg.layers))


def fold_latent_scale(vae: AutoencoderKL, latent_std: float) -> float:
    """Rescale the VAE in place so its latents times SD's 0.18215 have unit standard deviation.

    The posterior mean is scaled by k through `quant_conv` and undone in `post_quant_conv`, so
    decode(encode(x)) is unchanged; the log-variance shifts by 2 ln k. Returns k.
    """
    k = 1.0 / (SD_LATENT_SCALE * latent_std)
    e = vae.config.embed_dim
    with torch.no_grad():
        vae.quant_conv.weight[:e] *= k
        vae.quant_conv.bias[:e] *= k
        vae.quant_conv.bias[e:] += 2 * torch.log(torch.tensor(k))
        vae.post_quant_conv.weight /= k
    return k


def checkpoint_state_dict(unet: UNetModel, vae: AutoencoderKL, text: CLIPTextModel, dtype=torch.float16) -> dict:
    """The three networks under SD 1.x's single-file key names."""
    out = {}
    for prefix, module in ((UNET_PREFIX, unet), (VAE_PREFIX, vae)):
        out.update({prefix + k: v for k, v in module.state_dict().items()})
    for k, v in text.state_dict().items():
        name = k if k.startswith("text_model.") else "text_model." + k
        out[SD1_TEXT_PREFIX + name] = v
    return {k: v.detach().to(dtype if v.is_floating_point() else v.dtype).contiguous() for k, v in out.items()}
