"""Which model a state dict holds, from its keys and tensor shapes alone (never from file names).

`detect_model_spec` reads a mapping key -> shape, picks the first matching entry of the ordered
`FAMILY_RULES` table, and infers every network hyperparameter from shapes, so reduced-size models in
the original layout load through the same path as the full-size ones.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from webui.errors import ModelLoadError, UnsupportedModelError

from .specs import SDXL_LATENT_SCALE, SDXL_SCALAR_EMBED_DIM, ModelSpec, TextEncoderConfig, UNetConfig, VAEConfig
from .text_encoders import text_encoder_config_from_shapes

Shapes = Mapping[str, tuple[int, ...]]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TEXT_PREFIX = "cond_stage_model.transformer."
SD2_TEXT_PREFIX = "cond_stage_model.model."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
SDXL_BIGG_PREFIX = "conditioner.embedders.1.model."
SDXL_REFINER_BIGG_PREFIX = "conditioner.embedders.0.model."


@dataclass(frozen=True)
class Layout:
    """The few facts that tell families apart."""

    text: str  # "clip", "openclip", "sdxl", "sdxl_refiner" or "none"
    unet_in_channels: int


@dataclass(frozen=True)
class FamilyRule:
    family: str
    variant: str
    text: str
    unet_in_channels: int
    supported: bool = True

    def matches(self, layout: Layout) -> bool:
        return layout.text == self.text and layout.unet_in_channels == self.unet_in_channels


# Ordered, declarative: the first rule that matches wins (and a test checks no two can match).
FAMILY_RULES: tuple[FamilyRule, ...] = (
    FamilyRule("sdxl", "base", "sdxl", 4),
    FamilyRule("sdxl", "inpaint", "sdxl", 9, supported=False),
    FamilyRule("sdxl_refiner", "base", "sdxl_refiner", 4),
    FamilyRule("sd2", "base", "openclip", 4),
    FamilyRule("sd2", "inpaint", "openclip", 9),
    FamilyRule("sd2", "depth", "openclip", 5),
    FamilyRule("sd1", "base", "clip", 4),
    FamilyRule("sd1", "inpaint", "clip", 9),
)

TEXT_LAYOUT_MARKERS = (  # (layout, a key prefix that only that layout has), most specific first
    ("sdxl", SDXL_BIGG_PREFIX),
    ("sdxl_refiner", SDXL_REFINER_BIGG_PREFIX),
    ("openclip", SD2_TEXT_PREFIX),
    ("clip", SD1_TEXT_PREFIX),
)


def _has_prefix(shapes: Shapes, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in shapes)


def text_layout(shapes: Shapes) -> str:
    for layout, prefix in TEXT_LAYOUT_MARKERS:
        if _has_prefix(shapes, prefix):
            return layout
    return "none"


def describe_non_checkpoint(shapes: Shapes) -> str | None:
    """If the file is some other kind of model (VAE, LoRA, ...), say which and where it belongs."""
    keys = list(shapes)
    if not keys:
        return "the file contains no tensors"
    if any(k.startswith(("lora_unet_", "lora_te", "lora_")) or ".lora_down." in k or ".lora_A." in k for k in keys):
        return "this is a LoRA, not a checkpoint: put it in models/loras/ and use it with <lora:name:weight>"
    if any(k.startswith("control_model.") for k in keys) or any(k.startswith("controlnet_cond_embedding") for k in keys):
        return "this is a ControlNet, not a checkpoint: put it in models/controlnet/"
    if any(k.startswith(("encoder.", "decoder.", "first_stage_model.")) for k in keys) and not _has_prefix(shapes, UNET_PREFIX):
        return "this is a VAE, not a checkpoint: put it in models/vae/ and choose it as the VAE"
    if "string_to_param.*" in keys or "emb_params" in keys or any(k.startswith("string_to_param") for k in keys):
        return "this is a textual-inversion embedding, not a checkpoint: put it in models/embeddings/"
    if any(k.startswith(("down_blocks.", "conv_in.", "mid_block.")) for k in keys):
        return "this looks like a diffusers-format model part; single-file checkpoints in the original layout are supported"
    return None


def detect_layout(shapes: Shapes) -> Layout:
    key = UNET_PREFIX + "input_blocks.0.0.weight"
    in_channels = shapes[key][1] if key in shapes else 0
    return Layout(text_layout(shapes), in_channels)


def detect_model_spec(shapes: Shapes, source: object = "<state dict>") -> ModelSpec:
    """Identify the model in `shapes` (key -> tensor shape) and infer its hyperparameters."""
    what_else = None if _has_prefix(shapes, UNET_PREFIX) else describe_non_checkpoint(shapes)
    if what_else:
        raise ModelLoadError(source, what_else)
    layout = detect_layout(shapes)
    if layout.unet_in_channels == 0:
        raise ModelLoadError(source, "not a Stable Diffusion checkpoint (no UNet weights 'model.diffusion_model.*' found)")
    rule = next((r for r in FAMILY_RULES if r.matches(layout)), None)
    if rule is None:
        raise ModelLoadError(
            source,
            f"unknown architecture (text encoder layout '{layout.text}', UNet with {layout.unet_in_channels} "
            "input channels); supported: SD 1.x and SD 2.x (including inpainting and SD 2 depth models), "
            "SDXL base and SDXL refiner",
        )
    if not rule.supported:
        raise UnsupportedModelError(
            source, f"{_label(rule)} is not supported yet (SD 1.x, SD 2.x, SDXL base and SDXL refiner checkpoints are)"
        )

    sdxl = rule.family in ("sdxl", "sdxl_refiner")
    try:
        texts = _text_encoder_configs(rule, shapes)
        unet = infer_unet_config(shapes, UNET_PREFIX, sd2_heads=rule.family != "sd1")
        vae = infer_vae_config(shapes, VAE_PREFIX) if _has_prefix(shapes, VAE_PREFIX) else None
    except (KeyError, ValueError, IndexError, StopIteration) as exc:
        raise ModelLoadError(source, f"incomplete or damaged {_label(rule)} layout ({exc!r})") from exc
    width = sum(t.width for t in texts)
    if unet.context_dim != width:
        raise ModelLoadError(
            source, f"the UNet attends to {unet.context_dim}-wide text features but the text encoder gives {width}"
        )
    if sdxl:
        _check_sdxl_vector(source, rule, unet, texts)
    elif unet.adm_in_channels:
        raise ModelLoadError(source, f"unexpected 'label_emb' in a {_label(rule)} UNet (a class-conditioned model?)")
    if vae is None:
        raise ModelLoadError(source, "the checkpoint has no VAE weights ('first_stage_model.*')")
    if sdxl:
        vae = replace(vae, scale_factor=SDXL_LATENT_SCALE)
    return ModelSpec(
        family=rule.family, variant=rule.variant, unet=unet, vae=vae,  # type: ignore[arg-type]
        text_encoder=texts[0], text_encoder_2=texts[1] if len(texts) > 1 else None,
    )


def _label(rule: FamilyRule) -> str:
    names = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "sdxl_refiner": "SDXL refiner"}
    return names[rule.family] + ("" if rule.variant == "base" else f" {rule.variant}")


def _text_encoder_configs(rule: FamilyRule, shapes: Shapes) -> tuple[TextEncoderConfig, ...]:
    if rule.text == "clip":
        return (text_encoder_config_from_shapes("clip", SD1_TEXT_PREFIX, shapes),)
    if rule.text == "openclip":
        return (text_encoder_config_from_shapes("openclip", SD2_TEXT_PREFIX, shapes),)
    if rule.text == "sdxl":  # [CLIP-L | bigG] features; bigG also gives the pooled vector
        return (
            text_encoder_config_from_shapes("clip", SDXL_CLIP_L_PREFIX, shapes, sdxl=True),
            text_encoder_config_from_shapes("openclip", SDXL_BIGG_PREFIX, shapes, sdxl=True),
        )
    return (text_encoder_config_from_shapes("openclip", SDXL_REFINER_BIGG_PREFIX, shapes, sdxl=True),)


def _check_sdxl_vector(source: object, rule: FamilyRule, unet: UNetConfig, texts: tuple[TextEncoderConfig, ...]) -> None:
    """y = [pooled | 6 size embeddings] (base) or [pooled | 4 size + 1 aesthetic embeddings] (refiner)."""
    pooled = sum(t.projection_dim for t in texts)
    scalars = 6 if rule.family == "sdxl" else 5
    expected = pooled + scalars * SDXL_SCALAR_EMBED_DIM
    if unet.adm_in_channels != expected:
        raise ModelLoadError(
            source,
            f"the {_label(rule)} UNet's conditioning vector ('label_emb.0.0.weight') is {unet.adm_in_channels} wide, "
            f"but the pooled text ({pooled}) and {scalars} x {SDXL_SCALAR_EMBED_DIM} size embeddings give {expected}",
        )


def _indices(shapes: Shapes, pattern: str) -> list[int]:
    """Sorted distinct integers captured by `pattern` (a regex with one group) over all keys."""
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in shapes if (m := rx.match(k))})


def _depth(shapes: Shapes, block_prefix: str) -> int:
    return len(_indices(shapes, re.escape(block_prefix) + r"transformer_blocks\.(\d+)\."))


def infer_unet_config(shapes: Shapes, prefix: str = UNET_PREFIX, sd2_heads: bool = False,
                      encoder_only: bool = False) -> UNetConfig:
    """UNet hyperparameters from the shapes of its tensors (keys include `prefix`).

    `sd2_heads`: 64 channels per head (SD 2 and SDXL) instead of SD 1's 8 heads; shapes cannot tell.
    `encoder_only`: the downward half alone (a ControlNet, which has no output blocks: its `out_channels`
    are taken to be its `in_channels`).
    """
    p = prefix
    model_channels, in_channels = shapes[p + "input_blocks.0.0.weight"][:2]
    levels: list[list[int]] = [[]]  # per level, the input-block indices of its ResBlocks
    attention: list[bool] = []
    depth: list[int] = []
    mults: list[int] = []
    for i in _indices(shapes, re.escape(p) + r"input_blocks\.(\d+)\.")[1:]:
        if p + f"input_blocks.{i}.0.op.weight" in shapes:  # a Downsample closes the level
            levels.append([])
            continue
        levels[-1].append(i)
        if len(levels[-1]) == 1:
            out_ch = shapes[p + f"input_blocks.{i}.0.in_layers.2.weight"][0]
            mults.append(out_ch // model_channels)
            has_attn = p + f"input_blocks.{i}.1.proj_in.weight" in shapes
            attention.append(has_attn)
            depth.append(_depth(shapes, p + f"input_blocks.{i}.1.") if has_attn else 0)
    num_res_blocks = len(levels[0])
    if any(len(level) != num_res_blocks for level in levels):
        raise ValueError(f"UNet levels have different numbers of ResBlocks: {[len(x) for x in levels]}")

    proj_in = next(shape for key, shape in shapes.items() if key.startswith(p) and key.endswith("proj_in.weight"))
    label_emb = shapes.get(p + "label_emb.0.0.weight")  # [time_embed_dim, adm_in_channels] (SDXL)
    context_dim = next(shape[1] for key, shape in shapes.items() if key.startswith(p) and key.endswith("attn2.to_k.weight"))
    return UNetConfig(
        in_channels=in_channels,
        out_channels=in_channels if encoder_only else shapes[p + "out.2.weight"][0],
        model_channels=model_channels,
        channel_mult=tuple(mults),
        num_res_blocks=num_res_blocks,
        attention_levels=tuple(attention),
        transformer_depth=tuple(depth),
        transformer_depth_middle=_depth(shapes, p + "middle_block.1."),
        context_dim=context_dim,
        num_heads=None if sd2_heads else 8,
        num_head_channels=64 if sd2_heads else None,
        use_linear_in_transformer=len(proj_in) == 2,
        adm_in_channels=label_emb[1] if label_emb else None,
    )


def infer_vae_config(shapes: Shapes, prefix: str = VAE_PREFIX) -> VAEConfig:
    """AutoencoderKL hyperparameters from the shapes of its tensors (keys include `prefix`)."""
    p = prefix
    ch, in_channels = shapes[p + "encoder.conv_in.weight"][:2]
    levels = _indices(shapes, re.escape(p) + r"encoder\.down\.(\d+)\.")
    if any(k.startswith(p + f"encoder.down.{i}.attn.") for i in levels for k in shapes):
        raise ValueError("VAEs with attention inside the resolution levels are not supported")
    return VAEConfig(
        in_channels=in_channels,
        out_ch=shapes[p + "decoder.conv_out.weight"][0],
        ch=ch,
        ch_mult=tuple(shapes[p + f"encoder.down.{i}.block.0.conv2.weight"][0] // ch for i in levels),
        num_res_blocks=len(_indices(shapes, re.escape(p) + r"encoder\.down\.0\.block\.(\d+)\.")),
        z_channels=shapes[p + "encoder.conv_out.weight"][0] // 2,
        embed_dim=shapes[p + "quant_conv.weight"][0] // 2,
    )


def with_heads(spec: ModelSpec, num_heads: int | None, num_head_channels: int | None) -> ModelSpec:
    """The spec with an explicit head layout (from a config .yaml), which shapes cannot show."""
    unet = replace(spec.unet, num_heads=num_heads, num_head_channels=num_head_channels)
    return replace(spec, unet=unet)
