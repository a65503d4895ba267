"""txt2img, with batch count x batch size, the hires fix and the refiner."""

from __future__ import annotations

import torch

from webui.errors import Interrupted, RequestError, Skipped

from ..memory.oom import out_of_memory_at, size_detail
from ..request import GenerationRequest
from ..sampling.noise import ImageRNG
from .context import GenerationResult, PipelineContext
from .finish import finish_batch, new_result
from .refiner import with_refiner
from .steps import (
    SeedPlan, build_denoiser, decode, depth_conditioning, encode, encode_prompts, img2img_sigmas, inpainting_conditioning,
    latent_shape,
    model_schedule, noised, pure_noise, sample, sampling_sigmas, upscale_latents,
)


def txt2img(request: GenerationRequest, ctx: PipelineContext) -> GenerationResult:
    # 1. Validate what the request cannot check alone, and plan every image's seed.
    variant = ctx.bundle.spec.variant
    if ctx.bundle.spec.family == "sdxl_refiner":
        raise RequestError("init_image", None, "an input image: the SDXL refiner only refines; use it in img2img, "
                           "or choose it as refiner_checkpoint of an SDXL base model")
    plan = SeedPlan.of(request)
    result = new_result(request)

    # 2. Encode the prompt and negative prompt once for all batches.
    cond, uncond = encode_prompts(ctx, request)
    concat = extra_channels(ctx, request)
    denoiser = build_denoiser(ctx, request, cond, uncond, concat)
    schedule = model_schedule(ctx)
    sigmas = sampling_sigmas(request, schedule, request.steps)
    # The refiner takes over within this pass, or (as A1111's default) only in the hires pass.
    switch = None
    if not request.enable_hr:
        denoiser, switch = with_refiner(ctx, request, denoiser, sigmas, request.steps)

    for batch in range(request.batch_count):
        seeds, subseeds = plan.batch(request, batch)
        try:
            # 3. Starting noise from each image's own seed, drawn on the CPU.
            rng = ImageRNG(latent_shape(ctx, request.width, request.height), seeds, subseeds, request.subseed_strength)
            x = pure_noise(request, rng.first().to(ctx.bundle.device), sigmas)
            # 4. Sample.
            with torch.inference_mode():
                latents = sample(ctx, request, denoiser, x, sigmas, rng, batch, switch=switch)
            # 5. Hires fix: upscale, then denoise again at the higher resolution.
            if request.enable_hr:
                latents = hires_pass(ctx, request, latents, seeds, subseeds, cond, uncond, batch)
        except Skipped:
            continue
        except Interrupted:
            result.interrupted = True
            break
        # 6. Decode, save with infotext.
        finish_batch(ctx, request, result, decode(ctx, latents), seeds, subseeds, hires_size=hires_size(request))
    return result


def hires_size(request: GenerationRequest) -> tuple[int, int] | None:
    """The second pass's (width, height): hr_resize_x/y when given (one may be 0: keep the aspect), else scaled."""
    if not request.enable_hr:
        return None
    x, y = request.hr_resize_x, request.hr_resize_y
    if x and y:
        return x, y
    if x or y:
        scale = x / request.width if x else y / request.height
    else:
        scale = request.hr_scale
    return int(request.width * scale) // 8 * 8, int(request.height * scale) // 8 * 8


def hires_pass(ctx, request, latents, seeds, subseeds, cond, uncond, batch) -> torch.Tensor:
    width, height = hires_size(request)
    if width > 4096 or height > 4096:
        raise RequestError("hr_scale", request.hr_scale, f"a scale that keeps the image within 4096x4096 (gives {width}x{height})")
    if request.hr_upscaler.startswith("Latent"):
        with out_of_memory_at("hires upscale", size_detail(width, height, latents.shape[0])):
            upscaled = upscale_latents(latents, width, height, request.hr_upscaler)
    else:  # pixel upscalers: decode, resize, encode again
        resample = {"Lanczos": 1, "Nearest": 0}[request.hr_upscaler]
        images = [im.resize((width, height), resample) for im in decode(ctx, latents)]
        upscaled = torch.cat([encode(ctx, im) for im in images]).to(latents.device)
    concat = extra_channels(ctx, request, width, height)
    denoiser = build_denoiser(ctx, request, cond, uncond, concat, size=(width, height))
    steps = request.hr_second_pass_steps or request.steps
    sigmas = img2img_sigmas(request, model_schedule(ctx), steps, request.hr_denoising_strength)
    denoiser, switch = with_refiner(ctx, request, denoiser, sigmas, steps, size=(width, height))
    rng = ImageRNG(latent_shape(ctx, width, height), seeds, subseeds, request.subseed_strength)
    x = noised(request, upscaled, rng.first().to(upscaled.device), sigmas, request.hr_denoising_strength)
    with torch.inference_mode():
        return sample(ctx, request, denoiser, x, sigmas, rng, batch, phase="hires", switch=switch)


def extra_channels(ctx, request, width=None, height=None) -> torch.Tensor | None:
    """What inpainting and depth models see besides the latents in txt2img: everything masked (inpainting),
    or the request's depth map (depth)."""
    width, height = width or request.width, height or request.height
    variant = ctx.bundle.spec.variant
    if variant == "inpaint":
        return inpainting_conditioning(ctx, torch.zeros(1, 3, height, width), torch.ones(1, 1, height, width),
                                       request.batch_size)
    if variant == "depth":
        return depth_conditioning(ctx, request, None, width, height)
    return None
