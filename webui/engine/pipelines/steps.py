"""The steps every pipeline shares: seeds, prompts, sigmas, sampling, VAE encode/decode, saving."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from PIL import Image

from webui.errors import RequestError

from ..memory.oom import out_of_memory_at, size_detail
from ..memory.tiling import decode_within, encode_within
from ..models.loading import ModelBundle
from ..preview import latent_preview
from ..request import GenerationRequest
from ..prompts import ParsedPrompt, PromptPart
from ..sampling.denoisers import (
    CFGDenoiser, Conditioning, DiscreteSchedule, SamplingState, ScheduledConditioning, make_denoiser,
)
from ..sampling.noise import ImageRNG, resolve_seed
from ..sampling.registry import SamplerInfo, effective_schedule, sampler_info
from ..sampling.schedules import make_sigmas
from .context import PipelineContext, ProgressEvent
from .images import mask_to_tensor, resize_image, to_images, to_tensor
from .sdxl import sdxl_vector

if TYPE_CHECKING:
    from .refiner import ModelSwitch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeedPlan:
    """Every image's seed and variation seed: image n of the job uses seed + n (A1111's rule)."""

    seeds: list[int]
    subseeds: list[int]

    @classmethod
    def of(cls, request: GenerationRequest) -> SeedPlan:
        seed, subseed = resolve_seed(request.seed), resolve_seed(request.subseed)
        n = request.image_count
        return cls([seed + i for i in range(n)], [subseed + i for i in range(n)])

    def batch(self, request: GenerationRequest, index: int) -> tuple[list[int], list[int]]:
        start = index * request.batch_size
        return self.seeds[start : start + request.batch_size], self.subseeds[start : start + request.batch_size]


@dataclass(frozen=True)
class PromptEncoding:
    """The encoding of one text, repeated for the batch."""

    context: torch.Tensor  # (batch_size, 77 * chunks, width) token features
    pooled: torch.Tensor | None = None  # (batch_size, pooled width): SDXL's pooled text embedding


@dataclass(frozen=True)
class EncodedPrompt:
    """One side of classifier-free guidance: per AND-part, its weight and its (end_at_step, encoding)
    schedule (see `webui.engine.prompts`). A negative prompt has one part of weight 1."""

    parts: tuple[tuple[float, tuple[tuple[int, PromptEncoding], ...]], ...]

    @property
    def first(self) -> PromptEncoding:
        return self.parts[0][1][0][1]


def parse_prompts(ctx: PipelineContext, request: GenerationRequest) -> tuple[ParsedPrompt, ParsedPrompt]:
    """(prompt, negative prompt) parsed by the extensions' prompt syntax (literal text without one)."""
    positive = ctx.hooks.parse_prompt(request.prompt, request.steps, False)
    negative = ctx.hooks.parse_prompt(request.negative_prompt, request.steps, True)
    if len(negative.parts) != 1 or negative.parts[0].weight != 1.0:  # only the prompt may use AND
        negative = ParsedPrompt((PromptPart(1.0, negative.parts[0].schedule),))
    return positive, negative


def encode_prompts(
    ctx: PipelineContext, request: GenerationRequest, bundle: ModelBundle | None = None
) -> tuple[EncodedPrompt, EncodedPrompt]:
    """(cond, uncond) of `bundle` (default: the context's model) for one batch, with equal chunk counts.

    Every distinct text of the prompts' schedules and AND-parts is encoded once, in one batch.
    SDXL: an empty negative prompt is all zeros (context and pooled), not the encoding of "", as in
    A1111 and sgm (`force_zero_embeddings`) and diffusers' default.
    """
    bundle = bundle or ctx.bundle
    te = bundle.text_encoder
    positive, negative = parse_prompts(ctx, request)
    check_prompt_length(positive, "prompt")
    check_prompt_length(negative, "negative_prompt")
    embeddings = te.embedding_index(ctx.embeddings) if ctx.embeddings else None
    texts = list(dict.fromkeys([*positive.texts(), *negative.texts()]))
    try:  # one batch: every text padded to the longest one's chunk count
        with out_of_memory_at("text encoding", f"{len(texts)} texts"):
            context, pooled = te.encode_pieces(texts, request.clip_skip, embeddings=embeddings)
    except ValueError as exc:  # clip skip beyond this model's layers
        raise RequestError("clip_skip", request.clip_skip, str(exc)) from exc

    def encoding(i: int, zero: bool = False) -> PromptEncoding:  # (1, ...) -> (batch_size, ...)
        c = context[i : i + 1]
        p = None if pooled is None else pooled[i : i + 1]
        if zero:
            c, p = torch.zeros_like(c), None if p is None else torch.zeros_like(p)
        return PromptEncoding(c.expand(request.batch_size, -1, -1),
                              None if p is None else p.expand(request.batch_size, -1))

    encodings = {text: encoding(i) for i, text in enumerate(texts)}
    zero_negative = bundle.spec.is_sdxl and request.negative_prompt == ""

    def encoded(parsed: ParsedPrompt, zero: bool = False) -> EncodedPrompt:
        return EncodedPrompt(tuple(
            (part.weight, tuple(
                (entry.end_at_step, encoding(texts.index(entry.pieces), True) if zero else encodings[entry.pieces])
                for entry in part.schedule))
            for part in parsed.parts
        ))

    return encoded(positive), encoded(negative, zero_negative)


MAX_CHUNKS = 16  # 75-token chunks a prompt may take (1200 tokens); each one is a text encoder pass


def check_prompt_length(parsed: ParsedPrompt, field: str) -> None:
    """Refuse prompts whose texts add up to more than MAX_CHUNKS chunks (a rough count: 75 words or
    punctuation marks per chunk, before the tokenizer, which splits finer)."""
    pieces = sum(len(getattr(piece, "text", "").split()) for text in parsed.texts() for piece in text)
    if pieces > MAX_CHUNKS * 75:
        raise RequestError(field, f"about {pieces} tokens", f"at most {MAX_CHUNKS} chunks of 75 tokens")


def model_schedule(ctx: PipelineContext) -> DiscreteSchedule:
    # Recomputed from the betas formula rather than read from the file (some prunes store fp16 buffers).
    return DiscreteSchedule.scaled_linear()


def sampling_sigmas(request: GenerationRequest, schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    info = sampler_info(request.sampler_name)
    if info.timestep_sampler:
        return info.load_timesteps()(steps, schedule)
    return make_sigmas(
        effective_schedule(info, request.scheduler), steps, schedule,
        sigma_min=request.sigma_min or None, sigma_max=request.sigma_max or None,
        discard_penultimate=info.discard_penultimate,
    )


def build_denoiser(ctx: PipelineContext, request: GenerationRequest, cond: EncodedPrompt, uncond: EncodedPrompt,
                   concat: torch.Tensor | None = None, *, bundle: ModelBundle | None = None,
                   size: tuple[int, int] | None = None) -> CFGDenoiser:
    """The CFG denoiser of `bundle` (default: the context's model), its network wrapped by the extensions.
    SDXL: each text gets its own y vector, built from its pooled text and `size` = (width, height) of this
    pass (default: the request's)."""
    bundle = bundle or ctx.bundle
    state = SamplingState()
    unet = ctx.hooks.wrap_model(bundle.unet, request, bundle, state)
    if unet is not bundle.unet:  # wrappers keep the network's dtype, which the denoiser casts inputs to
        unet = WrappedModel(unet, bundle.unet.dtype)
    denoiser = make_denoiser(unet, model_schedule(ctx), bundle.spec.prediction)

    def conditioning(encoding: PromptEncoding, negative: bool) -> Conditioning:
        y = None
        if bundle.spec.is_sdxl:
            width, height = size or (request.width, request.height)
            y = sdxl_vector(bundle.spec, encoding.pooled, request, width, height, negative=negative)
        return Conditioning(encoding.context, concat, y)

    def scheduled(weight: float, schedule, negative: bool) -> ScheduledConditioning:
        return ScheduledConditioning(tuple((end, conditioning(e, negative)) for end, e in schedule), weight)

    conds = [scheduled(weight, schedule, False) for weight, schedule in cond.parts]
    return CFGDenoiser(denoiser, conds, scheduled(*uncond.parts[0], True), request.cfg_scale, request.cfg_rescale,
                       state)


class WrappedModel:
    """An extension's wrapper around the network, with the network's dtype."""

    def __init__(self, function, dtype: torch.dtype) -> None:
        self.function, self.dtype = function, dtype

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return self.function(*args, **kwargs)


def sample(
    ctx: PipelineContext,
    request: GenerationRequest,
    model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    rng: ImageRNG,
    batch_index: int,
    phase: str = "sampling",
    switch: ModelSwitch | None = None,
) -> torch.Tensor:
    """Run the request's sampler from x over sigmas, reporting progress and checking cancellation.

    `switch` (a `refiner.ModelSwitch` inside `model`) is told when each step is done.
    """
    info: SamplerInfo = sampler_info(request.sampler_name)
    function = info.load()
    options = dict(info.options)
    if info.uses_eta:
        options["eta"] = request.eta if request.eta is not None else (0.0 if info.name == "DDIM" else 1.0)
        options["s_noise"] = request.s_noise
        options["noise_sampler"] = rng.noise_sampler(x.device, x.dtype)
    total = len(sigmas) - 1

    if switch is not None:
        switch.reset()
    set_step = getattr(model, "set_step", None)  # scheduled prompts (and model wrappers) follow the steps
    if set_step is not None:
        set_step(0, total)

    def callback(state: dict) -> None:
        if switch is not None:
            switch.step_done(state["i"])
        if set_step is not None:
            set_step(state["i"] + 1)
        ctx.cancel.check()
        latents = state["denoised"]
        event = ProgressEvent(state["i"] + 1, total, batch_index, request.batch_count, phase, latents,
                              lambda: latent_preview(latents))
        ctx.hooks.on_step(event)
        if ctx.on_progress is not None:
            ctx.on_progress(event)

    f = ctx.bundle.spec.vae.downscale
    stage = "hires sampling" if phase == "hires" else "sampling"
    with out_of_memory_at(stage, size_detail(x.shape[-1] * f, x.shape[-2] * f, x.shape[0])):
        x = function(model, x, sigmas.to(x.device), callback=callback, **options)
    if info.timestep_sampler:  # they end at sigma_min, in the network's space: x_t = x / sqrt(1 + sigma^2)
        x = x / (1.0 + sigmas[-1].item() ** 2) ** 0.5
    return x


def pure_noise(request: GenerationRequest, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """The start of a full denoise: k-samplers start at noise * sigma_max; timestep samplers (DDIM,
    PLMS, UniPC) at pure noise in the network's space, x_T = noise, i.e. noise * sqrt(1 + sigma_max^2)."""
    if sampler_info(request.sampler_name).timestep_sampler:
        return noise * (1.0 + sigmas[0].item() ** 2) ** 0.5
    return noise * sigmas[0]


def decode(ctx: PipelineContext, latents: torch.Tensor) -> list[Image.Image]:
    return to_images(decode_pixels(ctx, latents))


def decode_pixels(ctx: PipelineContext, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> (B, 3, H, W) pixels in about [-1, 1].

    fp16 VAEs can overflow (the SDXL VAE notably does): when an fp16 decode gives NaN or Inf, it is
    decoded again in fp32 (the VAE is converted for that call and back; fp16 -> fp32 -> fp16 is exact).
    Decoded whole or in tiles as the job's memory policy decides (`memory.tiling.decode_within`).
    """
    vae = ctx.bundle.vae
    z = latents / ctx.bundle.spec.vae.scale_factor
    with torch.inference_mode():
        pixels = decode_within(ctx.memory, vae, z.to(vae.dtype))
        if vae.dtype != torch.float16 or torch.isfinite(pixels).all():
            return pixels
        del pixels
    log.warning("the fp16 VAE decode overflowed (NaN/Inf); decoding this batch again in fp32")
    try:
        vae.float()  # outside inference mode, so the converted weights stay ordinary tensors
        with torch.inference_mode():
            return decode_within(ctx.memory, vae, z.float())
    finally:
        vae.half()


def encode(ctx: PipelineContext, image: Image.Image | torch.Tensor) -> torch.Tensor:
    """An image (or (B, 3, H, W) tensor in [-1, 1]) -> scaled latents, (B, 4, H/8, W/8).

    The posterior mean is used (deterministic, as ComfyUI does); A1111 samples the posterior with an
    unseeded RNG, which makes img2img differ between runs. Tiled as the memory policy decides.
    """
    vae = ctx.bundle.vae
    pixels = to_tensor(image) if isinstance(image, Image.Image) else image
    with torch.inference_mode():
        mean, _ = encode_within(ctx.memory, vae, pixels.to(device=ctx.bundle.device, dtype=vae.dtype))
    return mean.float() * ctx.bundle.spec.vae.scale_factor


LATENT_UPSCALE_MODES = {  # A1111's latent upscalers: (interpolation mode, antialias)
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}


def upscale_latents(latents: torch.Tensor, width: int, height: int, upscaler: str) -> torch.Tensor:
    mode, antialias = LATENT_UPSCALE_MODES[upscaler]
    return F.interpolate(latents, size=(height // 8, width // 8), mode=mode, antialias=antialias)


def latent_shape(ctx: PipelineContext, width: int, height: int) -> tuple[int, int, int]:
    factor = ctx.bundle.spec.vae.downscale
    return ctx.bundle.spec.vae.embed_dim, height // factor, width // factor


def img2img_sigmas(request: GenerationRequest, schedule: DiscreteSchedule, steps: int, strength: float) -> torch.Tensor:
    """The tail of the full schedule that a partial denoise runs (A1111: t_enc = int(strength * steps))."""
    sigmas = sampling_sigmas(request, schedule, steps)
    t_enc = int(min(strength, 0.999) * steps)
    return sigmas[steps - t_enc - 1 :]


def noised(request: GenerationRequest, init: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor,
           strength: float) -> torch.Tensor:
    """The start of a partial denoise. At strength 1 the input carries no information: pure noise,
    so img2img at strength 1 is exactly txt2img with the same seed."""
    if strength >= 1.0:
        return pure_noise(request, noise, sigmas)
    return init + noise * sigmas[0]


def inpainting_conditioning(ctx: PipelineContext, image: torch.Tensor, mask: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The extra input of 9-channel inpainting models: [mask (1) | latent of the image with the mask
    area made neutral grey (4)], at latent size. image: (1, 3, H, W) in [-1, 1]; mask: (1, 1, H, W), 1 = repaint."""
    mask = mask.round()
    latent = encode(ctx, image * (1.0 - mask))
    small_mask = F.interpolate(mask, size=latent.shape[-2:], mode="nearest")
    return torch.cat([small_mask, latent], dim=1).expand(batch_size, -1, -1, -1).to(ctx.bundle.device)


def depth_conditioning(ctx: PipelineContext, request: GenerationRequest, image: Image.Image | None, width: int,
                       height: int) -> torch.Tensor:
    """The extra input of SD 2 depth models: (batch_size, 1, h, w), the depth at latent size in [-1, 1].

    From the request's depth map (white = near), fitted to width x height by its resize mode, or else
    estimated from `image` (the input image at that size) by the context's depth estimator.
    """
    if request.depth_map is not None:
        fitted = resize_image(request.depth_map, width, height, request.resize_mode).convert("L")
        depth = mask_to_tensor(fitted)[0]  # (1, H, W) in [0, 1]
    elif image is None:
        raise RequestError("depth_map", None, "a depth map or an input image: depth models generate from depth")
    elif ctx.depth_estimator is None:
        raise RequestError("depth_map", None, "a depth map (no depth estimator is installed: put a DPT model "
                           "folder such as Intel/dpt-hybrid-midas in models/depth, or upload a depth map)")
    else:
        with out_of_memory_at("depth estimation", size_detail(width, height, 1)):
            depth = ctx.depth_estimator(image)
    factor = ctx.bundle.spec.vae.downscale
    normalised = normalise_depth(depth, (height // factor, width // factor))
    return normalised.expand(request.batch_size, -1, -1, -1).to(ctx.bundle.device)


def normalise_depth(depth: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) depth -> (B, 1, h, w) in [-1, 1]: resized (bicubic) to `size`, then each image's range
    stretched to [-1, 1], as the SD 2 depth model was trained (diffusers' `prepare_depth_map`). A flat
    map, which has no range, is all zeros."""
    depth = F.interpolate(depth.float()[:, None], size=size, mode="bicubic", align_corners=False)
    low = torch.amin(depth, dim=[1, 2, 3], keepdim=True)
    high = torch.amax(depth, dim=[1, 2, 3], keepdim=True)
    span = high - low
    return torch.where(span > 0, 2.0 * (depth - low) / span.clamp(min=torch.finfo(torch.float32).tiny) - 1.0,
                       torch.zeros_like(depth))
