"""img2img end to end on a tiny random model."""

import numpy as np
import pytest
from PIL import Image

from webui.engine.pipelines import img2img, txt2img
from webui.engine.pipelines.images import resize_image
from webui.engine.pipelines.steps import decode, encode
from webui.engine.request import GenerationRequest

from .conftest import pixels


def gradient(w=64, h=64) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(255, 0, h, dtype=np.float32)[:, None, None]
    rgb = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)), np.full((h, w, 1), 90.0)], axis=2)
    return Image.fromarray(rgb.astype(np.uint8))


BASE = dict(width=64, height=64, steps=8, prompt="a photo", sampler_name="Euler", seed=5)


def test_strength_one_equals_txt2img_with_the_same_seed(ctx):
    a = img2img(GenerationRequest(**BASE, init_image=gradient(), denoising_strength=1.0), ctx)
    b = txt2img(GenerationRequest(**BASE), ctx)
    assert (pixels(a.images[0]) == pixels(b.images[0])).all()


def test_strength_sets_how_far_the_result_moves_from_the_input(ctx):
    """With random weights only the trend is meaningful (the demo model's tests check semantics):
    the result moves further from the input as strength grows, and strength picks the step count."""
    image = gradient()
    reconstruction = pixels(decode(ctx, encode(ctx, image))[0])  # what the VAE alone gives back
    steps_run = []
    ctx.on_progress = lambda e: steps_run.append(e.total_steps) if e.step == 1 else None

    def distance(strength):
        request = GenerationRequest(**{**BASE, "steps": 20, "scheduler": "Karras"}, init_image=image,
                                    denoising_strength=strength)
        return (pixels(img2img(request, ctx).images[0]) - reconstruction).abs().float().mean().item()

    low, mid, high = distance(0.05), distance(0.3), distance(0.9)
    assert low < mid < high
    assert steps_run == [2, 7, 19]  # A1111: int(strength * steps) + 1 steps of the full schedule's tail


@pytest.mark.parametrize("mode", ["Just resize", "Crop and resize", "Resize and fill"])
def test_resize_modes(ctx, mode):
    source = gradient(100, 40)
    assert resize_image(source, 96, 64, mode).size == (96, 64)
    result = img2img(GenerationRequest(**{**BASE, "width": 96, "height": 64}, init_image=source, resize_mode=mode,
                                       denoising_strength=0.5), ctx)
    assert result.images[0].size == (96, 64)


def test_crop_and_resize_keeps_the_centre():
    source = Image.new("RGB", (200, 100), (255, 0, 0))
    source.paste((0, 0, 255), (50, 0, 150, 100))  # blue centre square, red sides
    out = np.asarray(resize_image(source, 64, 64, "Crop and resize"))
    assert out[32, 5, 2] > 200 and out[32, 58, 2] > 200  # all blue: the red sides were cropped


def test_inpainting_model_in_img2img(sd1_inpaint):
    from webui.engine.pipelines import PipelineContext
    result = img2img(GenerationRequest(**BASE, init_image=gradient(), denoising_strength=0.6), PipelineContext(sd1_inpaint))
    assert result.images[0].size == (64, 64)


def test_strength_zero_is_the_input_as_the_vae_gives_it_back(ctx):
    image = gradient()
    result = img2img(GenerationRequest(**BASE, init_image=image, denoising_strength=0.0), ctx)
    assert (pixels(result.images[0]) == pixels(decode(ctx, encode(ctx, image))[0])).all()
