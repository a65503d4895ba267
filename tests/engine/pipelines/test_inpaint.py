"""Inpainting and outpainting end to end: unmasked pixels never change, the masked area does."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from webui.engine.pipelines import PipelineContext, inpaint, outpaint
from webui.engine.request import GenerationRequest

from .conftest import pixels
from .test_img2img import gradient

BASE = dict(width=64, height=64, steps=4, prompt="a blue square", sampler_name="Euler", seed=11,
            denoising_strength=0.9)


def square_mask(box=(16, 16, 40, 48), size=(64, 64)) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


def outside(mask: Image.Image, blur: int) -> np.ndarray:
    """Pixels certainly outside the feathered mask: the mask grown by 3 x blur + 1 in every direction
    (a square neighbourhood, as the separable blur spreads)."""
    grown = np.asarray(mask) > 0
    for _ in range(3 * blur + 1):
        grown = grown | np.roll(grown, 1, 0) | np.roll(grown, -1, 0)
        grown = grown | np.roll(grown, 1, 1) | np.roll(grown, -1, 1)
    return ~grown


@pytest.mark.parametrize("fill", ["fill", "original", "latent noise", "latent nothing"])
@pytest.mark.parametrize("blur", [0, 4])
def test_unmasked_pixels_are_unchanged(ctx, fill, blur):
    image, mask = gradient(), square_mask()
    result = inpaint(GenerationRequest(**BASE, init_image=image, mask=mask, mask_blur=blur, inpainting_fill=fill), ctx)
    out, src = pixels(result.images[0]), pixels(image)
    keep = outside(mask, blur)
    assert (out[keep] == src[keep]).all()
    inside = np.asarray(mask) > 0
    assert (out[inside] - src[inside]).abs().float().mean() > 5  # the masked area was repainted


def test_only_masked_area_and_inverted_mask(ctx):
    image, mask = gradient(), square_mask((40, 8, 56, 24))
    result = inpaint(GenerationRequest(**BASE, init_image=image, mask=mask, mask_blur=0, inpaint_full_res=True,
                                       inpaint_full_res_padding=4), ctx)
    out, src = pixels(result.images[0]), pixels(image)
    keep = outside(mask, 0)
    assert (out[keep] == src[keep]).all() and (out[~keep] != src[~keep]).any()
    assert "Inpaint area: Only masked, Masked area padding: 4" in result.infotexts[0]
    inverted = inpaint(GenerationRequest(**BASE, init_image=image, mask=mask, mask_blur=0, inpainting_mask_invert=True), ctx)
    inside = np.asarray(mask) > 0
    assert (pixels(inverted.images[0])[inside] == src[inside]).all()


def test_inpainting_model_keeps_unmasked_pixels(sd1_inpaint):
    image, mask = gradient(), square_mask()
    result = inpaint(GenerationRequest(**BASE, init_image=image, mask=mask, mask_blur=2), PipelineContext(sd1_inpaint))
    keep = outside(mask, 2)
    assert (pixels(result.images[0])[keep] == pixels(image)[keep]).all()


def test_empty_mask_is_a_clear_error(ctx):
    from webui.errors import RequestError
    with pytest.raises(RequestError, match="mask"):
        inpaint(GenerationRequest(**BASE, init_image=gradient(), mask=Image.new("L", (64, 64), 0)), ctx)


def test_outpaint_extends_the_canvas_and_keeps_the_original(ctx):
    image = gradient(64, 56)
    result = outpaint(GenerationRequest(**BASE, init_image=image, outpaint_left=16, outpaint_bottom=12, mask_blur=0), ctx)
    out = pixels(result.images[0])
    assert result.images[0].size == (80, 68)
    assert (out[0:56, 16:80] == pixels(image)).all()
    assert "Outpaint: " in result.infotexts[0] and "Size: 80x72" in result.infotexts[0]
