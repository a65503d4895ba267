"""Generation pipelines, one function per mode, each written as numbered steps.

`generate(request, ctx)` picks the pipeline from the request (txt2img, img2img, inpaint, outpaint).
"""

from __future__ import annotations

from dataclasses import replace

from ..patching import patched
from ..request import GenerationRequest
from .context import CancelToken, GenerationResult, PipelineContext, ProgressEvent
from .img2img import img2img
from .inpaint import inpaint, outpaint
from .txt2img import txt2img

PIPELINES = {"txt2img": txt2img, "img2img": img2img, "inpaint": inpaint, "outpaint": outpaint}


def generate(request: GenerationRequest, ctx: PipelineContext) -> GenerationResult:
    """Run the request's pipeline, with what the extensions add: the request as they rewrite it, and
    their weight patches applied for this job only (the base weights are restored exactly after)."""
    hooks = ctx.hooks
    rewritten = hooks.rewrite_request(request)
    ctx = replace(ctx, original_request=request)
    patches = hooks.weight_patches(rewritten, ctx.bundle)
    with patched({"unet": ctx.bundle.unet, "text_encoder": ctx.bundle.text_encoder}, patches):
        result = PIPELINES[rewritten.mode](rewritten, ctx)
    result.request = request
    result.notices = list(hooks.notices)
    return result


__all__ = ["CancelToken", "GenerationResult", "PipelineContext", "ProgressEvent", "generate", *PIPELINES]
