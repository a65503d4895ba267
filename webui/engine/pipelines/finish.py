"""The last step of every pipeline: infotext for each image, saving, and collecting the result."""

from __future__ import annotations

from PIL import Image

from webui.outputs import format_infotext, next_image_path, save_png

from ..request import SDXL_AESTHETIC_SCORE, SDXL_NEGATIVE_AESTHETIC_SCORE, GenerationRequest
from ..sampling.registry import sampler_info, schedule_label
from .context import GenerationResult, PipelineContext


def new_result(request: GenerationRequest) -> GenerationResult:
    return GenerationResult(request, [], [], [], [], [])


def infotext_params(ctx: PipelineContext, request: GenerationRequest, seed: int, subseed: int,
                    size: tuple[int, int], hires_size: tuple[int, int] | None) -> dict[str, object]:
    """A1111's "parameters" keys, in its order. None values are left out by the writer."""
    bundle = ctx.bundle
    info = sampler_info(request.sampler_name)
    model_hash = bundle.file_hash()
    vae_hash = bundle.file_hash("vae")
    mode = request.mode
    inpaint = mode in ("inpaint", "outpaint")
    params: dict[str, object] = {
        "Steps": request.steps,
        "Sampler": request.sampler_name,
        "Schedule type": None if info.timestep_sampler else schedule_label(request.sampler_name, request.scheduler),
        "CFG scale": request.cfg_scale,
        "Seed": seed,
        "Size": f"{size[0]}x{size[1]}",
        "Model hash": model_hash[:10] if model_hash else None,
        "Model": ctx.model_name,
        "VAE hash": vae_hash[:10] if vae_hash else None,
        "VAE": bundle.vae_path.name if bundle.vae_path else None,
        "Variation seed": subseed if request.subseed_strength else None,
        "Variation seed strength": request.subseed_strength or None,
        "Denoising strength": request.denoising_strength if request.init_image is not None else (
            request.hr_denoising_strength if request.enable_hr else None),
        "Clip skip": request.clip_skip if request.clip_skip > 1 else None,
        "RNG": "CPU",
        "Eta": request.eta,
        "CFG rescale": request.cfg_rescale or None,
        "Schedule min sigma": request.sigma_min or None,
        "Schedule max sigma": request.sigma_max or None,
    }
    if hires_size is not None:
        if request.hr_resize_x or request.hr_resize_y:
            params["Hires resize"] = f"{hires_size[0]}x{hires_size[1]}"
        else:
            params["Hires upscale"] = request.hr_scale
        params["Hires steps"] = request.hr_second_pass_steps or None
        params["Hires upscaler"] = request.hr_upscaler
    if request.refiner_checkpoint:
        params["Refiner"] = request.refiner_checkpoint
        params["Refiner switch at"] = request.refiner_switch_at
    if inpaint:
        params["Mask blur"] = request.mask_blur or None
        params["Mask mode"] = "Inpaint not masked" if request.inpainting_mask_invert else None
        params["Masked content"] = request.inpainting_fill if request.inpainting_fill != "original" else None
        if request.inpaint_full_res:
            params["Inpaint area"] = "Only masked"
            params["Masked area padding"] = request.inpaint_full_res_padding
    if request.depth:
        params["Depth map"] = "uploaded" if request.depth_map is not None else "estimated"
    if mode == "outpaint":
        params["Outpaint"] = (f"left {request.outpaint_left}, right {request.outpaint_right}, "
                              f"top {request.outpaint_top}, bottom {request.outpaint_bottom}")
    if bundle.spec.is_sdxl or (ctx.refiner is not None and request.refiner_checkpoint):
        params.update(sdxl_infotext_params(request))
    params.update(ctx.hooks.infotext_fields(request))
    params["Version"] = ctx.version
    return params


def sdxl_infotext_params(request: GenerationRequest) -> dict[str, object]:
    """The SDXL conditioning fields, each only when it differs from its default (see `webui.outputs.FIELDS`)."""
    def size(w: int, h: int) -> str | None:  # a 0 side: the generated size's
        return f"{w}x{h}" if w or h else None

    return {
        "SDXL original size": size(request.sdxl_original_width, request.sdxl_original_height),
        "SDXL crop top": request.sdxl_crop_top or None,
        "SDXL crop left": request.sdxl_crop_left or None,
        "SDXL target size": size(request.sdxl_target_width, request.sdxl_target_height),
        "SDXL aesthetic score": (request.sdxl_aesthetic_score
                                 if request.sdxl_aesthetic_score != SDXL_AESTHETIC_SCORE else None),
        "SDXL negative aesthetic score": (request.sdxl_negative_aesthetic_score
                                          if request.sdxl_negative_aesthetic_score != SDXL_NEGATIVE_AESTHETIC_SCORE
                                          else None),
    }


def finish_batch(
    ctx: PipelineContext,
    request: GenerationRequest,
    result: GenerationResult,
    images: list[Image.Image],
    seeds: list[int],
    subseeds: list[int],
    size: tuple[int, int] | None = None,
    hires_size: tuple[int, int] | None = None,
) -> None:
    """Add the batch's images to the result with their infotext; save them when an output folder is set.
    `size` is the generation size for "Size" (default: the request's width x height)."""
    shown = ctx.original_request or request  # the prompts as the user wrote them (e.g. with LoRA tags)
    for image, seed, subseed in zip(images, seeds, subseeds):
        image = ctx.hooks.postprocess_image(image, request, len(result.images))
        params = infotext_params(ctx, request, seed, subseed, size or (request.width, request.height), hires_size)
        infotext = format_infotext(shown.prompt, shown.negative_prompt, params)
        image.info["parameters"] = infotext
        result.images.append(image)
        result.seeds.append(seed)
        result.subseeds.append(subseed)
        result.infotexts.append(infotext)
        if ctx.output_dir is not None:
            try:
                result.paths.append(save_png(image, next_image_path(ctx.output_dir, seed, shown.prompt), infotext))
            except OSError as exc:  # disk full, no permission...: the image is still returned, and nothing partial
                notice = f"Could not save the image to {ctx.output_dir}: {exc.strerror or exc}"
                if notice not in result.notices:
                    result.notices.append(notice)
