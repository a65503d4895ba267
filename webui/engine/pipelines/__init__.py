"""Generation pipelines, one function per mode, each written as numbered steps.

`generate(request, ctx)` picks the pipeline from the request (txt2img, img2img, inpaint, outpaint).
"""

from __future__ import annotations

from ..request import GenerationRequest
from .context import CancelToken, GenerationResult, PipelineContext, ProgressEvent
from .img2img import img2img
from .inpaint import inpaint, outpaint
from .txt2img import txt2img

PIPELINES = {"txt2img": txt2img, "img2img": img2img, "inpaint": inpaint, "outpaint": outpaint}


def generate(request: GenerationRequest, ctx: PipelineContext) -> GenerationResult:
    return PIPELINES[request.mode](request, ctx)


__all__ = ["CancelToken", "GenerationResult", "PipelineContext", "ProgressEvent", "generate", *PIPELINES]
