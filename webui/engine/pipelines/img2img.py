"""img2img: denoise a resized input image part of the way, by denoising strength."""

from __future__ import annotations

import torch

from webui.errors import Interrupted, RequestError, Skipped

from ..request import GenerationRequest
from ..sampling.noise import ImageRNG
from .context import GenerationResult, PipelineContext
from .finish import finish_batch, new_result
from .images import resize_image, to_tensor
from .refiner import with_refiner
from .steps import (
    SeedPlan, build_denoiser, decode, depth_conditioning, encode, encode_prompts, img2img_sigmas,
    inpainting_conditioning, latent_shape, model_schedule, noised, sample,
)


def img2img(request: GenerationRequest, ctx: PipelineContext) -> GenerationResult:
    # 1. Validate and plan seeds.
    if request.init_image is None:
        raise RequestError("init_image", None, "an input image for img2img")
    plan = SeedPlan.of(request)
    result = new_result(request)

    # 2. Resize the input to the requested size and encode it to latents.
    image = resize_image(request.init_image, request.width, request.height, request.resize_mode)
    init = encode(ctx, image).expand(request.batch_size, -1, -1, -1)

    # 3. Prompts, denoiser (an inpainting model sees an all-white mask and the whole image; a depth model
    #    the depth map, or the input image's estimated depth).
    cond, uncond = encode_prompts(ctx, request)
    concat = None
    if ctx.bundle.spec.variant == "inpaint":  # fully masked, as A1111 does for plain img2img
        pixels = to_tensor(image)
        concat = inpainting_conditioning(ctx, pixels, torch.ones_like(pixels[:, :1]), request.batch_size)
    elif ctx.bundle.spec.variant == "depth":
        concat = depth_conditioning(ctx, request, image, request.width, request.height)
    denoiser = build_denoiser(ctx, request, cond, uncond, concat)

    # 4. The tail of the schedule that denoising strength selects; the refiner, if any, takes over within it.
    sigmas = img2img_sigmas(request, model_schedule(ctx), request.steps, request.denoising_strength)
    denoiser, switch = with_refiner(ctx, request, denoiser, sigmas, request.steps)

    for batch in range(request.batch_count):
        seeds, subseeds = plan.batch(request, batch)
        try:
            # 5. Noise the input to the first sigma and sample.
            rng = ImageRNG(latent_shape(ctx, request.width, request.height), seeds, subseeds, request.subseed_strength)
            if request.denoising_strength == 0:  # no denoising: the input as the VAE gives it back
                latents = init.to(ctx.bundle.device)
            else:
                x = noised(request, init.to(ctx.bundle.device), rng.first().to(ctx.bundle.device), sigmas,
                           request.denoising_strength)
                with torch.inference_mode():
                    latents = sample(ctx, request, denoiser, x, sigmas, rng, batch, switch=switch)
        except Skipped:
            continue
        except Interrupted:
            result.interrupted = True
            break
        # 6. Decode and save.
        finish_batch(ctx, request, result, decode(ctx, latents), seeds, subseeds)
    return result
