"""Applying units to a generation: control maps at the generation size, and the model wrapper that adds
the ControlNets' residuals to the UNet's at every network call.

The wrapper runs each unit's ControlNet on the same noisy latents, timesteps and text as the UNet (the
first four channels only, for inpainting models), scales its residuals by the unit's weight (and, in
the "more important" modes, by the soft schedule), keeps only the prompt's rows for "ControlNet is more
important", sums the units, and hands the sum to the UNet as `control=`. A unit acts only within its
guidance start/end (`SamplingState.within`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from webui.engine.pipelines.images import crop_region, expand_to_aspect, prepare_mask, resize_image

from .network import ControlNet
from .preprocessors import Estimate, preprocess
from .units import RESIZE_MODES, ControlUnit

ENGINE_RESIZE = dict(zip(RESIZE_MODES, ("Just resize", "Crop and resize", "Resize and fill")))


def control_map(unit: ControlUnit, image: Image.Image, width: int, height: int,
                estimate: Estimate | None = None) -> Image.Image:
    """The unit's control map at width x height: the image fitted by the unit's resize mode, then
    preprocessed there ("pixel perfect") or at `processor_res` (its short side) and resized back."""
    fitted = resize_image(image, width, height, ENGINE_RESIZE[unit.resize_mode])
    a, b = unit.thresholds()
    if unit.pixel_perfect or unit.module == "none":
        return preprocess(unit.module, fitted, a, b, estimate)
    scale = unit.processor_res / min(width, height)
    small = fitted.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.LANCZOS)
    return preprocess(unit.module, small, a, b, estimate).resize((width, height), Image.BICUBIC)


def inpaint_crop(image: Image.Image, request) -> Image.Image:
    """For inpainting "Only masked": the part of the control image under the region the engine repaints
    (the same box, scaled from the input image to the control image)."""
    sharp, _ = prepare_mask(request.mask, request.inpainting_mask_invert, request.mask_blur)
    region = crop_region(sharp, request.inpaint_full_res_padding)
    if region is None:
        return image
    source = request.init_image
    left, top, right, bottom = expand_to_aspect(region, request.width, request.height, source.width, source.height)
    sx, sy = image.width / source.width, image.height / source.height
    return image.crop((round(left * sx), round(top * sy), round(right * sx), round(bottom * sy)))


def hint_tensor(image: Image.Image, width: int, height: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, 3, height, width) in [0, 1]: the control map as a ControlNet reads it."""
    if image.size != (width, height):  # e.g. the hires pass: the map made at the first pass's size
        image = image.resize((width, height), Image.BICUBIC)
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None].to(device=device, dtype=dtype)


def add_residuals(total: Sequence[torch.Tensor] | None, more: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if total is None:
        return list(more)
    if len(total) != len(more):
        raise ValueError(f"cannot add {len(more)} control residuals to {len(total)}")
    return [a + b for a, b in zip(total, more)]


@dataclass
class ActiveUnit:
    """A unit ready to run: its validated settings, its network, and its control map."""

    unit: ControlUnit
    network: ControlNet
    image: Image.Image  # the control map at the generation size
    _hints: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict, repr=False)

    def hint(self, width: int, height: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (width, height)
        if key not in self._hints:
            self._hints[key] = hint_tensor(self.image, width, height, dtype, device)
        return self._hints[key]


class ControlledModel:
    """`model(x, t, context, **kwargs)` with the units' ControlNet residuals added (see the module doc)."""

    def __init__(self, model: Callable[..., torch.Tensor], units: list[ActiveUnit], sampling, downscale: int) -> None:
        self.model, self.units, self.sampling, self.downscale = model, units, sampling, downscale

    def __call__(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, **kwargs) -> torch.Tensor:
        control = kwargs.pop("control", None)
        y = kwargs.get("y")
        height, width = x.shape[-2] * self.downscale, x.shape[-1] * self.downscale
        for active in self.units:
            unit, network = active.unit, active.network
            if not self.sampling.within(unit.guidance_start, unit.guidance_end):
                continue
            rows = torch.arange(x.shape[0], device=x.device)
            if unit.cond_only:
                rows = rows[~torch.tensor(self._uncond(x.shape[0]), device=x.device)]
                if rows.numel() == 0:
                    continue
            dtype = network.dtype
            hint = active.hint(width, height, dtype, x.device).expand(len(rows), -1, -1, -1)
            latents = x[rows, : network.config.in_channels].to(dtype)
            out = network(latents, t[rows], context[rows].to(dtype), hint, None if y is None else y[rows].to(dtype))
            residuals = [r * s for r, s in zip(out, unit.scales(len(out)))]
            if len(rows) != x.shape[0]:  # the negative prompt's rows get no control
                residuals = [torch.zeros((x.shape[0], *r.shape[1:]), dtype=r.dtype, device=r.device).index_copy_(
                    0, rows, r) for r in residuals]
            control = add_residuals(control, residuals)
        if control is not None:
            kwargs["control"] = [r.to(x.dtype) for r in control]
        return self.model(x, t, context, **kwargs)

    def _uncond(self, rows: int) -> tuple[bool, ...]:
        uncond = self.sampling.uncond
        return uncond if len(uncond) == rows else (False,) * rows
