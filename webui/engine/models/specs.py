"""Plain-data descriptions of a checkpoint's networks, inferred from tensor shapes by `detection.py`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Prediction = Literal["eps", "v"]

# Latent scale factors are not stored in checkpoints; these are the reference values.
SD_LATENT_SCALE = 0.18215
SDXL_LATENT_SCALE = 0.13025
# SDXL embeds each size/crop/aesthetic number in 256 sinusoidal channels (sgm's ConcatTimestepEmbedderND).
SDXL_SCALAR_EMBED_DIM = 256


@dataclass(frozen=True)
class UNetConfig:
    """Hyperparameters of the LDM/sgm `openaimodel.UNetModel` layout (SD 1.x / 2.x / SDXL)."""

    in_channels: int  # 4, or 9 for inpainting, 5 for SD 2 depth
    out_channels: int
    model_channels: int  # 320 for SD
    channel_mult: tuple[int, ...]  # (1, 2, 4, 4) for SD
    num_res_blocks: int  # 2 for SD
    attention_levels: tuple[bool, ...]  # which levels carry a spatial transformer
    transformer_depth: tuple[int, ...]  # transformer blocks per level (0 where no attention)
    transformer_depth_middle: int
    context_dim: int  # 768 (CLIP-L) or 1024 (OpenCLIP-H)
    # Heads are not visible in shapes: SD 1 uses 8 heads everywhere, SD 2 uses 64 channels per head.
    num_heads: int | None = 8
    num_head_channels: int | None = None
    use_linear_in_transformer: bool = False  # SD 2/SDXL: Linear proj_in/proj_out; SD 1: 1x1 convs
    # Width of the extra conditioning vector y added to the time embedding through `label_emb`
    # (SDXL: 2816 = pooled text 1280 + 6 x 256 size embeddings; refiner 2560). None: no `label_emb`.
    adm_in_channels: int | None = None

    @property
    def time_embed_dim(self) -> int:
        return self.model_channels * 4

    def heads_for(self, channels: int) -> tuple[int, int]:
        """(heads, channels per head) of a transformer with `channels` channels."""
        if self.num_head_channels:
            return channels // self.num_head_channels, self.num_head_channels
        assert self.num_heads
        return self.num_heads, channels // self.num_heads


@dataclass(frozen=True)
class VAEConfig:
    """Hyperparameters of the LDM `AutoencoderKL` layout."""

    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4
    scale_factor: float = SD_LATENT_SCALE  # latent = scale_factor * posterior mean

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class TextEncoderConfig:
    """A CLIP text transformer, described in the `transformers` CLIPTextConfig terms."""

    layout: Literal["clip", "openclip"]  # key layout in the file: HF CLIP naming or OpenCLIP naming
    prefix: str  # key prefix in the checkpoint, e.g. "cond_stage_model.transformer."
    width: int  # hidden size: 768 for CLIP-L, 1024 for OpenCLIP-H
    layers: int
    heads: int
    mlp_width: int
    vocab_size: int = 49408
    max_positions: int = 77
    activation: str = "quick_gelu"  # CLIP-L uses quick_gelu; OpenCLIP uses exact gelu
    pad_token_id: int = 49407  # SD 1 pads with the end token; OpenCLIP (SD 2) pads with 0
    # SD 1: last layer ("last"); SD 2 and SDXL: penultimate layer ("penultimate").
    default_layer: Literal["last", "penultimate"] = "last"
    # SD 1/2 pass the chosen layer's output through the final layer norm; SDXL uses it raw.
    final_norm: bool = True
    # Width of the pooled, projected output (SDXL's OpenCLIP bigG: `text_projection`); 0: not used.
    projection_dim: int = 0


@dataclass(frozen=True)
class ModelSpec:
    """What a checkpoint is: its family, variant, networks and (when known) its prediction type."""

    family: Literal["sd1", "sd2", "sdxl", "sdxl_refiner"]
    variant: Literal["base", "inpaint", "depth"]
    unet: UNetConfig
    vae: VAEConfig
    text_encoder: TextEncoderConfig  # the only one, or SDXL base's first (CLIP-L); the refiner's is bigG
    prediction: Prediction = "eps"
    # Why the prediction type was chosen (shown to the user and recorded in logs).
    prediction_reason: str = "default for this family"
    # SDXL base's second text encoder (OpenCLIP bigG); its features follow the first's in the context.
    text_encoder_2: TextEncoderConfig | None = None

    @property
    def text_encoders(self) -> tuple[TextEncoderConfig, ...]:
        return (self.text_encoder,) if self.text_encoder_2 is None else (self.text_encoder, self.text_encoder_2)

    @property
    def is_sdxl(self) -> bool:
        return self.family in ("sdxl", "sdxl_refiner")

    @property
    def label(self) -> str:
        names = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "sdxl_refiner": "SDXL refiner"}
        suffix = "" if self.variant == "base" else f" {self.variant}"
        return f"{names[self.family]}{suffix}"
