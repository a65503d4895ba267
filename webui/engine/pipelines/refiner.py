"""The refiner: a second model (the SDXL refiner, or any model of the same latent space) that takes over
the last part of a sampling pass, as A1111's `refiner_checkpoint` / `refiner_switch_at` do.

Where the switch falls: at step ceil(refiner_switch_at x steps) of the FULL `steps`-step schedule (A1111
counts sampling steps the same way). A pass that runs only the tail of that schedule (img2img at a
denoising strength, the hires pass) switches at the same point of the schedule, i.e. at the same noise
level: earlier within the pass, or at its start when the pass begins after that point. One sampler run
goes on across the switch (its history and noise carry over); only the denoiser changes, to the
refiner's own, with its own prompt encoding (and, for the SDXL refiner, aesthetic score).
"""

from __future__ import annotations

import math

import torch

from webui.errors import RequestError

from ..models.loading import ModelBundle
from ..request import GenerationRequest
from .context import PipelineContext
from .steps import build_denoiser, encode_prompts


class ModelSwitch:
    """Calls `first` for the first `switch_step` sampler steps, then `second`; `sample` reports the steps."""

    def __init__(self, first, second, switch_step: int) -> None:
        self.first, self.second, self.switch_step = first, second, switch_step
        self.steps_done = 0

    def reset(self) -> None:
        self.steps_done = 0

    def step_done(self, index: int) -> None:
        self.steps_done = index + 1

    def set_step(self, step: int, total_steps: int | None = None) -> None:
        for model in (self.first, self.second):
            if hasattr(model, "set_step"):
                model.set_step(step, total_steps)

    @property
    def active(self):
        return self.first if self.steps_done < self.switch_step else self.second

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.active(x, sigma)


def refiner_bundle(ctx: PipelineContext, request: GenerationRequest) -> ModelBundle | None:
    """The refiner the request asks for, checked against the main model; None when it asks for none."""
    if not request.refiner_checkpoint:
        return None
    refiner = ctx.refiner
    if refiner is None:
        raise RequestError("refiner_checkpoint", request.refiner_checkpoint,
                           "a refiner loaded by the caller (PipelineContext.refiner), or '' for none")
    if refiner.spec.variant != "base":
        raise RequestError("refiner_checkpoint", request.refiner_checkpoint,
                           f"a model with 4 input channels, not an {refiner.spec.label} model")
    main, other = ctx.bundle.spec, refiner.spec
    if main.is_sdxl != other.is_sdxl or main.vae.embed_dim != other.vae.embed_dim:
        raise RequestError("refiner_checkpoint", request.refiner_checkpoint,
                           f"a model of the same latent space as the {main.label} model (got {other.label})")
    return refiner


def switch_step(request: GenerationRequest, steps: int, pass_steps: int) -> int:
    """Index, within a pass of `pass_steps` steps that ends a `steps`-step schedule, of the first refiner step."""
    full = math.ceil(request.refiner_switch_at * steps - 1e-9)  # 1e-9: 0.8 * 20 must give 16, not 17
    return max(0, full - max(0, steps - pass_steps))


def with_refiner(ctx: PipelineContext, request: GenerationRequest, base, sigmas: torch.Tensor, steps: int,
                 size: tuple[int, int] | None = None):
    """(model, switch) for a pass over `sigmas`: the base denoiser alone (switch None) when no refiner
    is asked for or the switch falls after this pass, else a ModelSwitch to the refiner's denoiser."""
    refiner = refiner_bundle(ctx, request)
    pass_steps = len(sigmas) - 1
    if refiner is None:
        return base, None
    index = switch_step(request, steps, pass_steps)
    if index >= pass_steps:
        return base, None
    cond, uncond = encode_prompts(ctx, request, refiner)
    second = build_denoiser(ctx, request, cond, uncond, bundle=refiner, size=size)
    switch = ModelSwitch(base, second, index)
    return switch, switch
