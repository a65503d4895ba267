"""Depth-to-image on a tiny random SD 2 depth checkpoint and a tiny random DPT depth estimator."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionDepth2ImgPipeline
from PIL import Image
from safetensors.torch import save_file
from transformers import DPTImageProcessorPil

from webui.engine.models.depth_estimator import DepthEstimator, DepthEstimatorStore
from webui.engine.models.loading import load_checkpoint
from webui.engine.pipelines import PipelineContext, generate
from webui.engine.pipelines.steps import depth_conditioning, normalise_depth
from webui.engine.request import GenerationRequest
from webui.errors import ModelLoadError, RequestError

from ..models.tiny_checkpoints import Recipe, make_checkpoint, save_tiny_dpt
from .conftest import pixels

SIZE = 64
BASE = dict(width=SIZE, height=SIZE, steps=4, prompt="a room", sampler_name="Euler", seed=3)


def processor() -> DPTImageProcessorPil:
    return DPTImageProcessorPil(size={"height": 64, "width": 64})  # SD 2 depth's is 384 x 384; same method


def scene(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    array = np.zeros((SIZE, SIZE, 3), np.uint8)
    array[:, : SIZE // 2] = rng.integers(0, 255, 3)
    array[SIZE // 4 :, SIZE // 2 :] = rng.integers(0, 255, 3)
    return Image.fromarray(array)


def gradient_map(horizontal: bool = True) -> Image.Image:
    ramp = np.linspace(0, 255, SIZE, dtype=np.float32)
    array = np.broadcast_to(ramp[None, :] if horizontal else ramp[:, None], (SIZE, SIZE))
    return Image.fromarray(array.astype(np.uint8), "L")


@pytest.fixture(scope="module")
def depth_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("depth-model") / "tiny-sd2-depth.safetensors"
    save_file(make_checkpoint(Recipe("sd2", "depth"), seed=8), str(path))
    return load_checkpoint(path)


@pytest.fixture(scope="module")
def estimator_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models-depth") / "tiny-dpt"
    save_tiny_dpt(folder)
    return folder


@pytest.fixture(scope="module")
def estimator(estimator_folder):
    return DepthEstimator.from_folder(estimator_folder)


def reference_depth(image, depth_map, estimator_model, batch_size=1):
    """diffusers' StableDiffusionDepth2ImgPipeline.prepare_depth_map with the same estimator."""
    pipe = SimpleNamespace(feature_extractor=processor(), depth_estimator=estimator_model, vae_scale_factor=8)
    return StableDiffusionDepth2ImgPipeline.prepare_depth_map(pipe, image, depth_map, batch_size, False,
                                                              torch.float32, torch.device("cpu"))


def test_estimated_depth_conditioning_equals_diffusers(depth_model, estimator):
    image = scene(1)
    ctx = PipelineContext(depth_model, depth_estimator=estimator)
    request = GenerationRequest(**BASE, init_image=image, depth=True, batch_size=2)
    ours = depth_conditioning(ctx, request, image, SIZE, SIZE)
    expected = reference_depth(image, None, estimator.model, batch_size=2)
    assert ours.shape == expected.shape == (2, 1, SIZE // 8, SIZE // 8)
    assert (ours - expected).abs().max() <= 1e-5
    assert ours.min() == -1 and ours.max() == 1


def test_an_uploaded_depth_map_is_normalised_like_an_estimate():
    depth = torch.rand(1, 40, 56, generator=torch.Generator().manual_seed(0)) * 7 + 3
    ours = normalise_depth(depth, (5, 7))
    expected = reference_depth(Image.new("RGB", (56, 40)), depth, None)
    assert (ours - expected).abs().max() <= 1e-6
    assert normalise_depth(torch.full((1, 8, 8), 0.4), (1, 1)).abs().max() == 0  # flat: no range, no NaN


def test_depth_to_image_from_the_image_follows_its_estimated_depth(depth_model, estimator):
    ctx = PipelineContext(depth_model, depth_estimator=estimator)
    result = generate(GenerationRequest(**BASE, init_image=scene(0), depth=True, denoising_strength=0.8), ctx)
    assert result.images[0].size == (SIZE, SIZE)
    assert "Depth map: estimated" in result.infotexts[0] and "Denoising strength: 0.8" in result.infotexts[0]
    other = generate(GenerationRequest(**BASE, init_image=scene(0), depth_map=gradient_map(), denoising_strength=0.8),
                     ctx)
    assert (pixels(result.images[0]) != pixels(other.images[0])).any()  # the depth input is used


def test_depth_map_alone_needs_no_estimator_and_the_map_matters(depth_model):
    ctx = PipelineContext(depth_model)  # no estimator at all
    left = generate(GenerationRequest(**BASE, depth_map=gradient_map(True)), ctx)
    top = generate(GenerationRequest(**BASE, depth_map=gradient_map(False)), ctx)
    again = generate(GenerationRequest(**BASE, depth_map=gradient_map(True)), ctx)
    assert "Depth map: uploaded" in left.infotexts[0] and "Denoising strength" not in left.infotexts[0]
    assert (pixels(left.images[0]) == pixels(again.images[0])).all()
    assert (pixels(left.images[0]) != pixels(top.images[0])).any()


def test_depth_models_in_img2img_estimate_the_depth_and_in_txt2img_need_a_map(depth_model, estimator):
    ctx = PipelineContext(depth_model, depth_estimator=estimator)
    assert generate(GenerationRequest(**BASE, init_image=scene(2)), ctx).images  # as A1111: estimated
    with pytest.raises(RequestError, match="depth_map: None is not allowed; expected a depth map or an input image"):
        generate(GenerationRequest(**BASE), ctx)


def test_without_an_estimator_the_error_says_how_to_get_one(depth_model):
    with pytest.raises(RequestError, match="models/depth"):
        generate(GenerationRequest(**BASE, init_image=scene(0), depth=True), PipelineContext(depth_model))


def test_a_model_that_is_not_a_depth_model_says_what_is_needed(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file(make_checkpoint(Recipe("sd1"), seed=1), str(path))
    with pytest.raises(RequestError, match="checkpoint: .* expected an SD 2 depth model .* a depth ControlNet for "
                                           "SD 1.x models in models/controlnet"):
        generate(GenerationRequest(**BASE, depth_map=gradient_map()), PipelineContext(load_checkpoint(path)))


@pytest.mark.parametrize("values, field", [
    (dict(depth=True), "depth_map"),
    (dict(depth_map=Image.new("L", (8, 8)), init_image=Image.new("RGB", (8, 8)), mask=Image.new("L", (8, 8))), "mask"),
    (dict(depth_map="near.png"), "depth_map"),
    (dict(depth="yes", init_image=Image.new("RGB", (8, 8))), "depth"),
])
def test_bad_depth_requests_name_the_field(values, field):
    with pytest.raises(RequestError) as info:
        GenerationRequest(**values)
    assert info.value.field == field


def test_the_estimator_folder_loads_and_gives_a_depth_picture(estimator_folder, estimator):
    image = scene(3).resize((80, 48))
    picture = estimator.depth_image(image)
    assert picture.mode == "L" and picture.size == (80, 48)
    values = np.asarray(picture)
    assert values.min() == 0 and values.max() == 255
    with pytest.raises(ModelLoadError, match="config.json and model.safetensors"):
        DepthEstimator.from_folder(estimator_folder.parent)


def test_the_store_loads_the_first_folder_and_offline_says_how_to_get_one(estimator_folder, tmp_path, monkeypatch):
    store = DepthEstimatorStore(lambda: [estimator_folder])
    assert store.get() is store.get() and store.get().name == "tiny-dpt"
    assert store.estimate(scene(0)).shape[0] == 1

    attempts = []

    def offline(hub_id, into, device):
        attempts.append(hub_id)
        raise ModelLoadError(hub_id, "the depth estimator could not be downloaded (offline)")

    monkeypatch.setattr(DepthEstimator, "download", staticmethod(offline))
    empty = DepthEstimatorStore(lambda: [], lambda: tmp_path)
    assert empty.get() is None and empty.get() is None
    assert attempts == ["Intel/dpt-hybrid-midas"]  # not again at every job
    with pytest.raises(RequestError, match="models/depth"):
        empty.depth_image(scene(0))
    assert DepthEstimatorStore(lambda: []).get() is None  # downloading switched off
