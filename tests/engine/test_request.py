"""GenerationRequest validation: every bad value names the field, the value and what is allowed."""

import math

import pytest
from PIL import Image

from webui.engine.request import GenerationRequest
from webui.errors import RequestError


@pytest.mark.parametrize(("field", "value", "allowed"), [
    ("steps", 0, "integer from 1 to 150"),
    ("steps", 2.5, "integer from 1 to 150"),
    ("steps", "20", "integer from 1 to 150"),
    ("steps", True, "integer from 1 to 150"),
    ("cfg_scale", math.nan, "number from 1.0 to 30.0"),
    ("cfg_scale", math.inf, "number from 1.0 to 30.0"),
    ("cfg_scale", 31, "number from 1.0 to 30.0"),
    ("width", 513, "multiple of 8"),
    ("height", 4096, "integer from 64 to 2048"),
    ("seed", 2**40, "integer from -1 to 4294967295"),
    ("batch_size", 9, "integer from 1 to 8"),
    ("denoising_strength", -0.1, "number from 0.0 to 1.0"),
    ("sampler_name", "Euler z", "one of DPM++ 2M, DPM++ SDE"),
    ("scheduler", "Fancy", "one of Automatic, Uniform, Karras"),
    ("inpainting_fill", "blur", "one of 'fill', 'original'"),
    ("resize_mode", 7, "one of 'Just resize'"),
    ("hr_upscaler", "ESRGAN_4x", "one of 'Latent'"),
    ("clip_skip", 0, "integer from 1 to 12"),
])
def test_bad_values_name_the_field(field, value, allowed):
    with pytest.raises(RequestError) as info:
        GenerationRequest(**{field: value})
    assert info.value.field == field
    assert allowed in str(info.value) and str(info.value).startswith(f"{field}: ")


def test_defaults_are_a1111s_ui_defaults():
    r = GenerationRequest()
    assert (r.steps, r.sampler_name, r.scheduler, r.cfg_scale, r.width, r.height, r.seed) == (
        20, "DPM++ 2M", "Automatic", 7.0, 512, 512, -1)
    assert (r.denoising_strength, r.mask_blur, r.inpainting_fill, r.inpaint_full_res_padding) == (0.75, 4, "original", 32)
    assert r.mode == "txt2img"


def test_names_are_normalised():
    r = GenerationRequest(sampler_name="k_euler_a", inpainting_fill=0, resize_mode="crop AND resize")
    assert (r.sampler_name, r.inpainting_fill, r.resize_mode) == ("Euler a", "fill", "Crop and resize")
    old = GenerationRequest(sampler_name="DPM++ 2M Karras")
    assert (old.sampler_name, old.scheduler) == ("DPM++ 2M", "Automatic")  # Karras is its Automatic, as A1111 reads it
    assert GenerationRequest(sampler_name="DPM++ 2M SDE Karras").scheduler == "Karras"
    assert GenerationRequest(scheduler="sgmuniform").scheduler == "SGM Uniform"


def test_modes_and_image_checks():
    image = Image.new("RGB", (64, 64))
    assert GenerationRequest(init_image=image).mode == "img2img"
    assert GenerationRequest(init_image=image, mask=Image.new("L", (64, 64))).mode == "inpaint"
    assert GenerationRequest(init_image=image, outpaint_left=64).mode == "outpaint"
    with pytest.raises(RequestError, match="mask: '32x32' is not allowed; expected the size of init_image"):
        GenerationRequest(init_image=image, mask=Image.new("L", (32, 32)))
    with pytest.raises(RequestError, match="mask"):
        GenerationRequest(mask=Image.new("L", (64, 64)))
    with pytest.raises(RequestError, match="init_image"):
        GenerationRequest(init_image="/etc/passwd")


def test_from_dict_refuses_unknown_keys():
    with pytest.raises(RequestError, match="sampler: 'Euler' is not allowed; expected a known field"):
        GenerationRequest.from_dict({"sampler": "Euler"})
    assert GenerationRequest.from_dict({"steps": 5}).steps == 5
