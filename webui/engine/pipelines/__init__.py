"""Generation pipelines, one function per mode, each written as numbered steps.

`generate(request, ctx)` picks the pipeline from the request (txt2img, img2img, inpaint, outpaint, depth),
and runs it again with stronger memory savers when it runs out of memory.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from ..memory.estimate import estimate_generation, plan_offload
from ..memory.oom import OutOfMemory, detach, free_memory
from ..memory.policy import apply_policy
from ..patching import patched
from ..request import GenerationRequest
from .context import CancelToken, GenerationResult, PipelineContext, ProgressEvent
from .depth import depth
from .img2img import img2img
from .inpaint import inpaint, outpaint
from .txt2img import txt2img

PIPELINES = {"txt2img": txt2img, "img2img": img2img, "inpaint": inpaint, "outpaint": outpaint, "depth": depth}


log = logging.getLogger(__name__)


def generate(request: GenerationRequest, ctx: PipelineContext) -> GenerationResult:
    """Run the request's pipeline, with an "auto" offload mode chosen from its estimated peak memory
    (`memory.estimate.plan_offload`); when it runs out of memory, free what the attempt held and run it
    again under each of the policy's fallbacks in turn (`MemoryPolicy.fallbacks`: tiled VAE, sliced
    attention, offloading), for this job only. If the last one fails too, its `OutOfMemory` (which
    says where and what to change) is raised; the model stays loaded, back under the job's policy."""
    planned = plan_offload(ctx.bundle, ctx.memory, request.width, request.height, request.batch_size)
    if planned is not ctx.memory:  # "auto" offloading, decided for this job's size before it runs
        apply_policy(ctx.bundle, planned)
        ctx = replace(ctx, memory=planned)
    outcome = _attempt(request, ctx)
    if isinstance(outcome, GenerationResult):
        return outcome
    first, used = outcome, []
    try:
        for name, policy in ctx.memory.fallbacks(first.stage, _saves_memory(ctx, request, first.stage)):
            log.warning("%s; retrying with %s", outcome, name)
            used.append(name)
            apply_policy(ctx.bundle, policy)
            outcome = _attempt(request, replace(ctx, memory=policy))
            if isinstance(outcome, GenerationResult):
                outcome.notices.append(f"Ran out of memory at {first.stage}; finished with {', '.join(used)}. "
                                       "Set them in Settings (Memory) to skip the failed attempt next time.")
                return outcome
    finally:
        apply_policy(ctx.bundle, ctx.memory)
    raise outcome


def _saves_memory(ctx: PipelineContext, request: GenerationRequest, stage: str):
    """Whether a policy change lowers the estimated need at `stage` (stages the estimate does not
    cover are given the benefit of the doubt)."""
    def need(policy) -> int | None:
        estimate = estimate_generation(ctx.bundle, policy, request.width, request.height, request.batch_size)
        return estimate.stages.get(stage)

    def helps(before, after) -> bool:
        old, new = need(before), need(after)
        return old is None or new < old

    return helps


def _attempt(request: GenerationRequest, ctx: PipelineContext) -> GenerationResult | OutOfMemory:
    """One run of the job. Out of memory is returned, not raised, once its traceback (the attempt's
    frames and the tensors they hold) is dropped and the memory freed."""
    try:
        return _generate(request, ctx)
    except OutOfMemory as exc:
        failure = detach(exc)
    free_memory()  # after the except block, and once `detach` has let go of the attempt's frames
    return failure


def _generate(request: GenerationRequest, ctx: PipelineContext) -> GenerationResult:
    """Run the request's pipeline, with what the extensions add: the request as they rewrite it, and
    their weight patches applied for this job only (the base weights are restored exactly after)."""
    hooks = ctx.hooks
    rewritten = hooks.rewrite_request(request, ctx.bundle)
    ctx = replace(ctx, original_request=request)
    patches = hooks.weight_patches(rewritten, ctx.bundle)
    with patched({"unet": ctx.bundle.unet, "text_encoder": ctx.bundle.text_encoder}, patches):
        result = PIPELINES[rewritten.mode](rewritten, ctx)
    result.request = request
    result.notices = [*hooks.notices, *result.notices]
    return result


__all__ = ["CancelToken", "GenerationResult", "PipelineContext", "ProgressEvent", "generate", *PIPELINES]
