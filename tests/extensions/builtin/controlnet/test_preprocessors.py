"""Preprocessors and control maps: what each makes of an image, at which size."""

import cv2
import numpy as np
import pytest
from PIL import Image

from extensions.builtin.controlnet.control import control_map, hint_tensor, inpaint_crop
from extensions.builtin.controlnet.preprocessors import PREPROCESSORS, preprocess
from extensions.builtin.controlnet.units import ControlUnit
from webui.engine.request import GenerationRequest


def disc(size=(96, 64), centre=(30, 32), radius=18, colour=(200, 40, 40), background=(20, 40, 200)) -> Image.Image:
    image = Image.new("RGB", size, background)
    array = np.asarray(image).copy()
    yy, xx = np.mgrid[: size[1], : size[0]]
    array[(xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2] = colour
    return Image.fromarray(array)


def test_canny_is_opencv_canny_with_the_unit_s_thresholds():
    image = disc()
    out = np.asarray(preprocess("canny", image, 100, 200))
    expected = cv2.Canny(np.asarray(image), 100, 200)
    assert out.shape == (64, 96, 3) and (out[..., 0] == expected).all() and (out[..., 2] == expected).all()
    assert expected.any()  # the disc's outline


def test_invert_threshold_and_scribble():
    image = disc(colour=(250, 250, 250), background=(10, 10, 10))
    assert (np.asarray(preprocess("invert", image, 0, 0)) == 255 - np.asarray(image)).all()
    thresholded = np.asarray(preprocess("threshold", image, 127, 0))[..., 0]
    assert set(np.unique(thresholded)) == {0, 255} and thresholded[32, 30] == 255 and thresholded[0, 0] == 0
    drawing = Image.new("RGB", (64, 64), "white")
    drawing.paste((0, 0, 0), (10, 30, 50, 31))  # a one-pixel pen stroke on paper
    strokes = np.asarray(preprocess("scribble", drawing, 127, 0))[..., 0]
    assert strokes[30, 20] == 255 and strokes[29, 20] == 255 and strokes[5, 5] == 0  # white, thickened


def test_lineart_marks_dark_lines_and_leaves_flat_areas_black():
    drawing = Image.new("RGB", (64, 64), "white")
    drawing.paste((0, 0, 0), (10, 30, 54, 32))
    lines = np.asarray(preprocess("lineart", drawing, 0, 0))[..., 0]
    assert lines[31, 32] > 100 and lines[5, 5] == 0


def test_depth_uses_the_estimator_it_is_given():
    seen = []

    def estimate(image):
        seen.append(image.size)
        return Image.new("L", (10, 10), 77)

    out = preprocess("depth", disc(), 0, 0, estimate)
    assert seen == [(96, 64)] and out.size == (96, 64) and np.asarray(out)[5, 5, 1] == 77
    with pytest.raises(LookupError):
        preprocess("depth", disc(), 0, 0, None)


@pytest.mark.parametrize("mode, expected_centre_x", [("Just Resize", 40), ("Crop and Resize", 28),
                                                     ("Resize and Fill", 40)])
def test_control_maps_are_fitted_to_the_generation_size_by_the_resize_mode(mode, expected_centre_x):
    image = disc(size=(96, 64), centre=(30, 32))
    unit = ControlUnit(model="m", module="threshold", threshold_a=70, resize_mode=mode)
    out = np.asarray(control_map(unit, image, 128, 128))[..., 0]
    assert out.shape == (128, 128)
    xs = np.nonzero(out > 0)[1]
    assert abs(xs.mean() - expected_centre_x) < 3  # stretched, cropped at the sides, or letterboxed


def test_without_pixel_perfect_the_preprocessor_runs_at_processor_res():
    image = disc(size=(256, 256), centre=(128, 128), radius=80)
    sizes = []
    unit = ControlUnit(model="m", module="depth", pixel_perfect=False, processor_res=64)
    out = control_map(unit, image, 256, 256, lambda im: sizes.append(im.size) or Image.new("L", im.size))
    assert sizes == [(64, 64)] and out.size == (256, 256)


def test_hints_are_rgb_in_0_1_at_the_size_asked():
    hint = hint_tensor(Image.new("RGB", (32, 16), (255, 0, 128)), 64, 32, dtype=__import__("torch").float32,
                       device="cpu")
    assert tuple(hint.shape) == (1, 3, 32, 64)
    assert hint[0, 0].min() == 1 and hint[0, 1].max() == 0 and abs(float(hint[0, 2, 5, 5]) - 128 / 255) < 1e-3


def test_inpainting_only_masked_crops_the_control_image_like_the_engine():
    source = Image.new("RGB", (200, 100))
    mask = Image.new("L", (200, 100))
    mask.paste(255, (150, 40, 170, 60))
    request = GenerationRequest(init_image=source, mask=mask, inpaint_full_res=True, inpaint_full_res_padding=10,
                                mask_blur=0, width=64, height=64)
    control = Image.new("RGB", (400, 200))  # twice the input image's size
    assert inpaint_crop(control, request).size == (80, 80)  # the 40 x 40 box (with padding), scaled by 2


def test_every_preprocessor_runs_on_an_odd_sized_image():
    for name in PREPROCESSORS:
        out = preprocess(name, disc(size=(37, 23), centre=(18, 11), radius=8), 100, 200,
                         lambda im: Image.new("L", (5, 5), 9))
        assert out.size == (37, 23) and out.mode == "RGB", name
