"""Inpainting (ordinary checkpoints by latent masking, and 9-channel inpainting models) and outpainting."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from PIL import Image

from webui.errors import Interrupted, RequestError, Skipped

from ..request import GenerationRequest
from ..sampling.noise import ImageRNG
from .context import GenerationResult, PipelineContext
from .finish import finish_batch, new_result
from .images import crop_region, expand_to_aspect, fill_masked, mask_to_tensor, prepare_mask, resize_image, to_tensor
from .refiner import with_refiner
from .steps import (
    SeedPlan, build_denoiser, decode, depth_conditioning, encode, encode_prompts, img2img_sigmas,
    inpainting_conditioning, latent_shape, model_schedule, noised, sample,
)


class KeepUnmasked:
    """Holds the known (unmasked) latent area to the input after every denoising step."""

    def __init__(self, denoiser, init: torch.Tensor, keep: torch.Tensor) -> None:
        self.denoiser, self.init, self.keep = denoiser, init, keep

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.init * self.keep + self.denoiser(x, sigma) * (1 - self.keep)


def inpaint(
    request: GenerationRequest,
    ctx: PipelineContext,
    *,
    report_as: GenerationRequest | None = None,
    crop_to: tuple[int, int] | None = None,
) -> GenerationResult:
    """Repaint the white area of request.mask. (`report_as` and `crop_to` serve `outpaint`.)"""
    # 1. Validate and plan seeds.
    if request.init_image is None or request.mask is None:
        raise RequestError("mask", None, "an input image and a mask (white = repaint) for inpainting")
    plan = SeedPlan.of(request)
    result = new_result(report_as or request)
    original = request.init_image.convert("RGB")

    # 2. The mask: inverted if asked, made binary, and a blurred copy to feather the final composite.
    sharp, blurred = prepare_mask(request.mask, request.inpainting_mask_invert, request.mask_blur)
    if sharp.getbbox() is None:
        raise RequestError("mask", "an empty mask", "a mask with some white (area to repaint)")

    # 3. The area to work on: the whole picture, or only the masked region (with padding) enlarged.
    box = None
    if request.inpaint_full_res:
        box = expand_to_aspect(crop_region(sharp, request.inpaint_full_res_padding), request.width, request.height,
                               original.width, original.height)
        work, work_mask = original.crop(box), blurred.crop(box)
    else:
        work, work_mask = original, blurred
    size = (request.width, request.height)
    work = resize_image(work, *size, request.resize_mode)
    work_mask = work_mask.resize(size, Image.BICUBIC) if work_mask.size != size else work_mask

    # 4. Masked content "fill": start the masked area from the surrounding colours.
    if request.inpainting_fill == "fill":
        work = Image.composite(fill_masked(work, work_mask), work, work_mask)

    # 5. Encode; the latent mask (1 = repaint) is the feathered mask at latent size, rounded.
    init = encode(ctx, work).to(ctx.bundle.device)
    h, w = init.shape[-2:]
    repaint = mask_to_tensor(work_mask.resize((w, h), Image.BICUBIC)).round().to(ctx.bundle.device)
    keep = 1.0 - repaint

    # 6. Prompts; 9-channel inpainting models also see the mask and the image without the masked area,
    #    depth models the estimated depth of the area worked on.
    cond, uncond = encode_prompts(ctx, request)
    concat = None
    if ctx.bundle.spec.variant == "inpaint":
        concat = inpainting_conditioning(ctx, to_tensor(work), mask_to_tensor(work_mask), request.batch_size)
    elif ctx.bundle.spec.variant == "depth":
        concat = depth_conditioning(ctx, request, work, *size)
    sigmas = img2img_sigmas(request, model_schedule(ctx), request.steps, request.denoising_strength)
    model, switch = with_refiner(ctx, request, build_denoiser(ctx, request, cond, uncond, concat), sigmas, request.steps)
    denoiser = KeepUnmasked(model, init, keep)

    for batch in range(request.batch_count):
        seeds, subseeds = plan.batch(request, batch)
        try:
            # 7. Start latents by masked content, noised to the first sigma, and sample.
            rng = ImageRNG(latent_shape(ctx, *size), seeds, subseeds, request.subseed_strength)
            noise = rng.first().to(ctx.bundle.device)
            start = init.expand_as(noise)
            if request.inpainting_fill == "latent noise":
                start = start * keep + noise * repaint
            elif request.inpainting_fill == "latent nothing":
                start = start * keep
            x = noised(request, start, noise, sigmas, request.denoising_strength)
            with torch.inference_mode():
                latents = sample(ctx, request, denoiser, x, sigmas, rng, batch, switch=switch)
            latents = latents * repaint + init * keep
        except Skipped:
            continue
        except Interrupted:
            result.interrupted = True
            break
        # 8. Decode and composite into the original through the feathered mask: unmasked pixels stay as they were.
        images = [_composite(original, work, work_mask, blurred, im, box) for im in decode(ctx, latents)]
        if crop_to is not None:
            images = [im.crop((0, 0, *crop_to)) for im in images]
        finish_batch(ctx, report_as or request, result, images, seeds, subseeds, size=size)
    return result


def _composite(original, work, work_mask, blurred, generated, box) -> Image.Image:
    if box is None:
        base = original if original.size == generated.size else work
        return Image.composite(generated, base, work_mask)
    left, top, right, bottom = box
    patch = generated.resize((right - left, bottom - top), Image.LANCZOS)
    out = original.copy()
    out.paste(patch, (left, top), blurred.crop(box))
    return out


def outpaint(request: GenerationRequest, ctx: PipelineContext) -> GenerationResult:
    """Extend the canvas by the requested pixels, then inpaint the new border."""
    # 1. The new canvas, its size rounded up to a multiple of 8 for the networks (cropped back at the end).
    src = request.init_image.convert("RGB")
    left, right, top, bottom = request.outpaint_left, request.outpaint_right, request.outpaint_top, request.outpaint_bottom
    width, height = src.width + left + right, src.height + top + bottom
    gen_w, gen_h = math.ceil(width / 8) * 8, math.ceil(height / 8) * 8
    if gen_w > 2048 or gen_h > 2048:
        raise RequestError("outpaint_right" if gen_w > 2048 else "outpaint_bottom", f"{width}x{height}",
                           "extensions that keep the canvas within 2048x2048")
    # 2. The border is the mask; it starts from the picture's blurred colours.
    canvas = Image.new("RGB", (gen_w, gen_h))
    canvas.paste(src, (left, top))
    mask = Image.new("L", (gen_w, gen_h), 255)
    mask.paste(0, (left, top, left + src.width, top + src.height))
    canvas = Image.composite(fill_masked(canvas, mask), canvas, mask)
    # 3. Inpaint the whole new canvas.
    inner = replace(request, init_image=canvas, mask=mask, width=gen_w, height=gen_h, inpaint_full_res=False,
                    inpainting_mask_invert=False, outpaint_left=0, outpaint_right=0, outpaint_top=0, outpaint_bottom=0)
    result = inpaint(inner, ctx, report_as=request, crop_to=(width, height))
    result.request = request
    return result
