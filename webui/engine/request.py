"""GenerationRequest: the one typed, validated contract between UI, API, presets, infotext and engine.

Field names follow AUTOMATIC1111's API where one exists, so requests and infotexts map one to one.
Every bad value raises `RequestError` naming the field, the value and what is allowed.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from PIL import Image

from webui.errors import RequestError

from .sampling.registry import resolve_sampler

INPAINTING_FILLS = ("fill", "original", "latent noise", "latent nothing")  # A1111's order (API ints 0..3)
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill")  # API ints 0..2
HR_UPSCALERS = (
    "Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)", "Latent (nearest)",
    "Latent (nearest-exact)", "Lanczos", "Nearest",
)
MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 16384  # a prompt is at most this long (the parser and text encoder must stay cheap)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # control characters other than tab and newline
SDXL_AESTHETIC_SCORE, SDXL_NEGATIVE_AESTHETIC_SCORE = 6.0, 2.5  # sgm's and diffusers' refiner defaults
SDXL_SIZE_FIELDS = ("sdxl_original_width", "sdxl_original_height", "sdxl_crop_top", "sdxl_crop_left",
                    "sdxl_target_width", "sdxl_target_height")


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20
    sampler_name: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    cfg_scale: float = 7.0
    cfg_rescale: float = 0.0
    width: int = 512
    height: int = 512
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    batch_count: int = 1
    batch_size: int = 1
    clip_skip: int = 1
    eta: float | None = None  # None: the sampler's default (1 for ancestral/SDE samplers, 0 for DDIM)
    s_noise: float = 1.0
    sigma_min: float | None = None  # None: the model's own
    sigma_max: float | None = None
    # Hires fix (txt2img): a first pass at width x height, then an upscaled second pass.
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0  # 0: as many as the first pass
    hr_denoising_strength: float = 0.7
    hr_resize_x: int = 0  # 0 and 0: scale by hr_scale
    hr_resize_y: int = 0
    # img2img and inpainting
    init_image: Image.Image | None = None
    denoising_strength: float = 0.75
    resize_mode: str = "Just resize"
    mask: Image.Image | None = None  # white = repaint
    mask_blur: int = 4
    inpainting_fill: str = "original"
    inpaint_full_res: bool = False  # True: "Only masked" inpaint area
    inpaint_full_res_padding: int = 32
    inpainting_mask_invert: bool = False
    # Depth-to-image (the depth tab): generation follows a depth map, `depth_map` (white = near) or, when
    # none is given, one estimated from init_image. With init_image it is denoised like img2img (by
    # denoising_strength); with a depth map alone, generated from noise. A depth map implies depth=True.
    depth: bool = False
    depth_map: Image.Image | None = None
    # Outpainting: extend the canvas of init_image by these many pixels, then inpaint the new area.
    outpaint_left: int = 0
    outpaint_right: int = 0
    outpaint_top: int = 0
    outpaint_bottom: int = 0
    # Refiner (A1111's API names): another model of the same latent space (the SDXL refiner) takes over
    # the sampling at `refiner_switch_at` of the steps. The caller loads it and passes it to the pipeline
    # (PipelineContext.refiner); "" or None: no refiner.
    refiner_checkpoint: str = ""
    refiner_switch_at: float = 0.8
    # SDXL size and aesthetic conditioning (A1111's API has none). Sizes 0: the size being generated
    # (what the reference pipelines use); the crop is the top-left corner the model is told was cut off.
    sdxl_original_width: int = 0
    sdxl_original_height: int = 0
    sdxl_crop_top: int = 0
    sdxl_crop_left: int = 0
    sdxl_target_width: int = 0
    sdxl_target_height: int = 0
    # SDXL refiner only: the aesthetic score the prompt / negative prompt are conditioned on (sgm, diffusers).
    sdxl_aesthetic_score: float = SDXL_AESTHETIC_SCORE
    sdxl_negative_aesthetic_score: float = SDXL_NEGATIVE_AESTHETIC_SCORE
    # Extension parameters, namespaced by extension name.
    extensions: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def mode(self) -> str:
        if self.depth:
            return "depth"
        if self.init_image is None:
            return "txt2img"
        if self.outpaint_left or self.outpaint_right or self.outpaint_top or self.outpaint_bottom:
            return "outpaint"
        return "inpaint" if self.mask is not None else "img2img"

    @property
    def image_count(self) -> int:
        return self.batch_count * self.batch_size

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> GenerationRequest:
        """Build from a mapping; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise RequestError(unknown[0], values[unknown[0]], f"a known field ({', '.join(sorted(known))})")
        return cls(**values)


def _set(request: GenerationRequest, name: str, value: object) -> None:
    object.__setattr__(request, name, value)


def _number(request: GenerationRequest, name: str, lo: float, hi: float, integer: bool = False) -> None:
    value = getattr(request, name)
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(name, value, f"{kind} from {lo} to {hi}")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise RequestError(name, value, f"{kind} from {lo} to {hi}")
        value = int(value)
    elif not math.isfinite(value):
        raise RequestError(name, value, f"{kind} from {lo} to {hi}")
    if not lo <= value <= hi:
        raise RequestError(name, value, f"{kind} from {lo} to {hi}")
    _set(request, name, value if integer else float(value))


def _choice(request: GenerationRequest, name: str, choices: tuple[str, ...]) -> None:
    """Accept the display name (case-insensitive) or, like A1111's API, its index."""
    value = getattr(request, name)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(choices):
        _set(request, name, choices[value])
        return
    for choice in choices:
        if isinstance(value, str) and value.strip().lower() == choice.lower():
            _set(request, name, choice)
            return
    raise RequestError(name, value, "one of " + ", ".join(repr(c) for c in choices))


def _clean_text(text: str) -> str:
    """NFC, without control characters (NUL...) or lone surrogates, which no tokenizer or PNG takes."""
    text = text.encode("utf-8", "replace").decode("utf-8")  # a lone surrogate becomes "?"
    return _CONTROL.sub("", unicodedata.normalize("NFC", text))


def _validate(r: GenerationRequest) -> None:
    for name in ("prompt", "negative_prompt"):
        if not isinstance(getattr(r, name), str):
            raise RequestError(name, getattr(r, name), "text")
        if len(getattr(r, name)) > MAX_PROMPT_CHARS:
            raise RequestError(name, f"{len(getattr(r, name)):,} characters", f"at most {MAX_PROMPT_CHARS:,} characters")
        _set(r, name, _clean_text(getattr(r, name)))
    _number(r, "steps", 1, 150, integer=True)
    _number(r, "cfg_scale", 1.0, 30.0)
    _number(r, "cfg_rescale", 0.0, 1.0)
    for name in ("width", "height"):
        _number(r, name, 64, 2048, integer=True)
        if getattr(r, name) % 8:
            raise RequestError(name, getattr(r, name), "a multiple of 8 from 64 to 2048")
    _number(r, "seed", -1, MAX_SEED, integer=True)
    _number(r, "subseed", -1, MAX_SEED, integer=True)
    _number(r, "subseed_strength", 0.0, 1.0)
    _number(r, "batch_count", 1, 100, integer=True)
    _number(r, "batch_size", 1, 8, integer=True)
    _number(r, "clip_skip", 1, 12, integer=True)
    if r.eta is not None:
        _number(r, "eta", 0.0, 1.0)
    _number(r, "s_noise", 0.0, 1.1)
    for name in ("sigma_min", "sigma_max"):
        if getattr(r, name) is not None:
            _number(r, name, 0.0, 1000.0)
    sampler, schedule = resolve_sampler(r.sampler_name, r.scheduler)  # raises RequestError for unknown names
    _set(r, "sampler_name", sampler)
    _set(r, "scheduler", schedule)

    _number(r, "hr_scale", 1.0, 4.0)
    _choice(r, "hr_upscaler", HR_UPSCALERS)
    _number(r, "hr_second_pass_steps", 0, 150, integer=True)
    _number(r, "hr_denoising_strength", 0.0, 1.0)
    for name in ("hr_resize_x", "hr_resize_y"):
        _number(r, name, 0, 4096, integer=True)
        if getattr(r, name) % 8:
            raise RequestError(name, getattr(r, name), "0 or a multiple of 8 up to 4096")

    _number(r, "denoising_strength", 0.0, 1.0)
    _choice(r, "resize_mode", RESIZE_MODES)
    _number(r, "mask_blur", 0, 64, integer=True)
    _choice(r, "inpainting_fill", INPAINTING_FILLS)
    _number(r, "inpaint_full_res_padding", 0, 256, integer=True)
    for name in ("outpaint_left", "outpaint_right", "outpaint_top", "outpaint_bottom"):
        _number(r, name, 0, 2048, integer=True)
    if r.refiner_checkpoint is None:
        _set(r, "refiner_checkpoint", "")
    if not isinstance(r.refiner_checkpoint, str):
        raise RequestError("refiner_checkpoint", r.refiner_checkpoint, "a checkpoint name, or '' for no refiner")
    _number(r, "refiner_switch_at", 0.0, 1.0)
    for name in SDXL_SIZE_FIELDS:
        _number(r, name, 0, 16384, integer=True)
    for name in ("sdxl_aesthetic_score", "sdxl_negative_aesthetic_score"):
        _number(r, name, 0.0, 10.0)
    for name in ("init_image", "mask", "depth_map"):
        value = getattr(r, name)
        if value is not None and not isinstance(value, Image.Image):
            raise RequestError(name, type(value).__name__, "an image")
    if r.mask is not None and r.init_image is None:
        raise RequestError("mask", "a mask without an image", "a mask together with init_image")
    if r.mask is not None and r.mask.size != r.init_image.size:
        raise RequestError("mask", f"{r.mask.width}x{r.mask.height}",
                           f"the size of init_image ({r.init_image.width}x{r.init_image.height})")
    if not isinstance(r.depth, bool):
        raise RequestError("depth", r.depth, "true or false")
    if r.depth_map is not None:
        _set(r, "depth", True)
    if r.depth:
        if r.init_image is None and r.depth_map is None:
            raise RequestError("depth_map", None, "a depth map or an input image (init_image) to estimate one from")
        if r.mask is not None:
            raise RequestError("mask", "a mask", "no mask: depth-to-image repaints the whole image")
        if r.outpaint_left or r.outpaint_right or r.outpaint_top or r.outpaint_bottom:
            raise RequestError("outpaint_left", "outpainting", "no outpainting with depth-to-image")
    if not isinstance(r.extensions, Mapping):
        raise RequestError("extensions", r.extensions, "a mapping from extension name to its parameters")
