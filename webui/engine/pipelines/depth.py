"""Depth-to-image (the depth tab): generate following a depth map, with an SD 2 depth model.

The depth map is the request's (white = near) or the input image's, estimated by the context's depth
estimator; the model sees it, at latent size in [-1, 1], as its fifth input channel
(`steps.depth_conditioning`). With an input image the job runs as img2img (by denoising strength), with a
depth map alone as txt2img. Checkpoints that are not depth models get depth guidance from a depth
ControlNet instead, which the ControlNet extension sets up before the job reaches this pipeline.
"""

from __future__ import annotations

from webui.errors import RequestError

from ..request import GenerationRequest
from .context import GenerationResult, PipelineContext
from .img2img import img2img
from .txt2img import txt2img


def depth(request: GenerationRequest, ctx: PipelineContext) -> GenerationResult:
    # 1. Validate: the checkpoint must be a depth model (the request has an image or a depth map).
    spec = ctx.bundle.spec
    if spec.variant != "depth":
        family = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}.get(spec.family, spec.label)
        raise RequestError("checkpoint", f"{ctx.model_name} ({spec.label})",
                           "an SD 2 depth model (e.g. 512-depth-ema) for the depth tab, or a depth ControlNet for "
                           f"{family} models in models/controlnet (a file with 'depth' in its name, e.g. "
                           "control_v11f1p_sd15_depth)")
    # 2. Denoise the input image, or generate from noise, with the depth as the extra channel.
    return img2img(request, ctx) if request.init_image is not None else txt2img(request, ctx)
