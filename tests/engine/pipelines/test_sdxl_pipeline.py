"""SDXL through our pipelines: 3 Euler steps of txt2img against diffusers' StableDiffusionXLPipeline
assembled from the same random ORIGINAL-layout weights, the refiner (its denoiser step against
diffusers' UNet, and where the switch falls), img2img / inpaint, the request fields and the infotext."""

from __future__ import annotations

import importlib

import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPTokenizer

from webui.engine.models.loading import load_checkpoint
from webui.engine.models.text_encoders import _standard_vocab
from webui.engine.pipelines import PipelineContext, img2img, inpaint, txt2img
from webui.engine.pipelines.images import to_images
from webui.engine.pipelines.refiner import switch_step
from webui.engine.pipelines.steps import (
    build_denoiser, decode_pixels, encode_prompts, latent_shape, model_schedule, sampling_sigmas,
)
from webui.engine.request import GenerationRequest
from webui.engine.sampling.noise import ImageRNG
from webui.errors import RequestError
from webui.outputs import infotext_to_fields, parse_infotext

from ..models.reference import reference_bigg, reference_clip_l, reference_sdxl_unet, reference_vae, rel_err
from ..models.tiny_checkpoints import SDXL_BIGG, SDXL_CLIP_L, SDXL_PREFIXES, Recipe, make_checkpoint

txt2img_module = importlib.import_module("webui.engine.pipelines.txt2img")  # the package exports the function
BASE, REFINER = Recipe("sdxl"), Recipe("sdxl_refiner")
SMALL = dict(width=96, height=64, steps=3, sampler_name="Euler", prompt="a red circle on a blue square", seed=77)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sdxl-models")
    out = {}
    for recipe, seed in ((BASE, 31), (REFINER, 32)):
        checkpoint = make_checkpoint(recipe, seed=seed)
        path = folder / f"tiny-{recipe.family}.safetensors"
        save_file(checkpoint, str(path))
        out[recipe.family] = (checkpoint, path)
    return out


@pytest.fixture(scope="module")
def base(files):
    return load_checkpoint(files["sdxl"][1])


@pytest.fixture(scope="module")
def refiner(files):
    return load_checkpoint(files["sdxl_refiner"][1])


def diffusers_pipeline(checkpoint) -> StableDiffusionXLPipeline:
    vocab, merges = _standard_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    tokenizer_2 = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, pad_token="!")  # OpenCLIP pads with 0
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="linspace")  # starts at noise * sigma_max, as k-diffusion
    return StableDiffusionXLPipeline(
        vae=reference_vae(checkpoint, BASE),
        text_encoder=reference_clip_l(checkpoint, SDXL_PREFIXES["clip_l"], SDXL_CLIP_L["width"], SDXL_CLIP_L["layers"]),
        text_encoder_2=reference_bigg(checkpoint, SDXL_PREFIXES["bigg"], SDXL_BIGG["width"], SDXL_BIGG["layers"],
                                      SDXL_BIGG["projection"]),
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=reference_sdxl_unet(checkpoint, BASE),
        scheduler=scheduler, add_watermarker=False,
    )


@pytest.mark.parametrize("negative", ["", "blurry, low quality"], ids=["empty-negative", "negative"])
def test_txt2img_matches_stable_diffusion_xl_pipeline(files, base, negative, monkeypatch):
    """Our whole txt2img (prompt encoding, y vectors, CFG denoiser, Euler, SDXL VAE scale) against diffusers'
    pipeline with identical components, starting noise and sigmas; batch 2, 96x64 (non-square)."""
    request = GenerationRequest(**SMALL, negative_prompt=negative, batch_size=2, cfg_scale=6.0)
    ctx = PipelineContext(base)
    captured = []
    monkeypatch.setattr(txt2img_module, "decode", lambda c, latents: _decode(c, latents, captured))
    result = txt2img(request, ctx)
    assert len(result.images) == 2 and result.images[0].size == (96, 64)
    (latents,) = captured
    pixels = decode_pixels(ctx, latents)

    sigmas = sampling_sigmas(request, model_schedule(ctx), request.steps)
    noise = ImageRNG(latent_shape(ctx, 96, 64), [77, 78], [0, 0], 0.0).first()
    pipe = diffusers_pipeline(files["sdxl"][0])
    with torch.inference_mode():
        ref_latents = pipe(request.prompt, negative_prompt=negative or None, height=64, width=96,
                           sigmas=sigmas.tolist(), guidance_scale=6.0, num_images_per_prompt=2,
                           latents=noise.clone(), output_type="latent").images
        ref_pixels = pipe.vae.decode(ref_latents / pipe.vae.config.scaling_factor).sample
    assert pipe.vae.config.scaling_factor == 0.13025
    assert rel_err(latents, ref_latents) <= 1e-4
    assert rel_err(pixels, ref_pixels) <= 1e-4


def _decode(ctx, latents, captured):
    """The pipeline's decode step, keeping the latents it was given."""
    captured.append(latents.clone())
    return to_images(decode_pixels(ctx, latents))


def test_refiner_denoiser_step_matches_diffusers_unet(files, refiner):
    """One CFG step of the refiner: its own bigG conditioning, aesthetic scores 6.0 / 2.5 in y."""
    request = GenerationRequest(**SMALL, negative_prompt="ugly", cfg_scale=5.0, sdxl_original_width=1024,
                                sdxl_original_height=768, sdxl_crop_top=8, sdxl_crop_left=16)
    ctx = PipelineContext(refiner)
    cond, uncond = encode_prompts(ctx, request)
    denoiser = build_denoiser(ctx, request, cond, uncond)
    x = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(9)) * 3.0
    sigma = torch.tensor([2.5])
    with torch.inference_mode():
        ours = denoiser(x, sigma)

    checkpoint = files["sdxl_refiner"][0]
    unet = reference_sdxl_unet(checkpoint, REFINER)
    bigg = reference_bigg(checkpoint, SDXL_PREFIXES["refiner_bigg"], SDXL_BIGG["width"], SDXL_BIGG["layers"],
                          SDXL_BIGG["projection"])
    te = refiner.text_encoder.first
    ids = torch.tensor([te.tokenize_chunks(request.prompt)[0], te.tokenize_chunks("ugly")[0]])
    schedule = model_schedule(ctx)
    with torch.inference_mode():
        out = bigg(input_ids=ids, output_hidden_states=True)
        time_ids = torch.tensor([[768.0, 1024, 8, 16, 6.0], [768.0, 1024, 8, 16, 2.5]])  # (h, w, top, left, score)
        x_in = torch.cat([x, x]) / (sigma**2 + 1).sqrt()
        eps = unet(x_in, schedule.sigma_to_t(sigma).expand(2), encoder_hidden_states=out.hidden_states[-2],
                   added_cond_kwargs={"text_embeds": out.text_embeds, "time_ids": time_ids}).sample
        eps_cond, eps_uncond = eps.chunk(2)
        expected = x - sigma * (eps_uncond + 5.0 * (eps_cond - eps_uncond))
    assert rel_err(ours, expected) <= 1e-4


class CountingUNet:
    """Stands in for a bundle's UNet and records, per call, which model ran at which sampling step."""

    def __init__(self, unet, name: str, log: list, progress: list) -> None:
        self.unet, self.name, self.log, self.progress = unet, name, log, progress

    def __call__(self, *args, **kwargs):
        self.log.append((self.name, len(self.progress)))  # steps completed so far = this call's step
        return self.unet(*args, **kwargs)


@pytest.fixture
def counted(base, refiner, monkeypatch):
    log, progress = [], []
    monkeypatch.setattr(base, "unet", CountingUNet(base.unet, "base", log, progress))
    monkeypatch.setattr(refiner, "unet", CountingUNet(refiner.unet, "refiner", log, progress))
    ctx = PipelineContext(base, refiner=refiner, on_progress=lambda event: progress.append(event))
    return ctx, log, progress


def _steps_by_model(log) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {"base": [], "refiner": []}
    for name, step in log:
        out[name].append(step)
    return out


def test_refiner_takes_over_at_the_switch_step(counted):
    ctx, log, progress = counted
    result = txt2img(GenerationRequest(**{**SMALL, "steps": 10}, refiner_checkpoint="tiny-refiner",
                                       refiner_switch_at=0.8), ctx)
    assert _steps_by_model(log) == {"base": list(range(8)), "refiner": [8, 9]}  # one call per Euler step
    assert len(progress) == 10
    info = parse_infotext(result.infotexts[0]).params
    assert (info["Refiner"], info["Refiner switch at"]) == ("tiny-refiner", "0.8")


def test_refiner_switch_with_a_two_call_sampler_and_batches(counted):
    ctx, log, _ = counted
    txt2img(GenerationRequest(**{**SMALL, "steps": 4, "sampler_name": "Heun"}, batch_count=2,
                              refiner_checkpoint="r", refiner_switch_at=0.5), ctx)
    steps = _steps_by_model(log)
    # Heun: two calls per step but the last; every batch starts again with the base model.
    assert [s % 4 for s in steps["base"]] == [0, 0, 1, 1] * 2
    assert [s % 4 for s in steps["refiner"]] == [2, 2, 3] * 2


def test_img2img_switches_at_the_same_point_of_the_schedule(counted, base):
    ctx, log, _ = counted
    init = Image.new("RGB", (96, 64), (200, 40, 40))
    # 10 steps at strength 0.5: the last 6 steps of the 10-step schedule run; the refiner from step 8 on.
    img2img(GenerationRequest(**{**SMALL, "steps": 10}, init_image=init, denoising_strength=0.5,
                              refiner_checkpoint="r", refiner_switch_at=0.8), ctx)
    steps = _steps_by_model(log)
    assert (len(steps["base"]), len(steps["refiner"])) == (4, 2)
    assert switch_step(GenerationRequest(refiner_switch_at=0.8), 20, 20) == 16
    assert switch_step(GenerationRequest(refiner_switch_at=0.8), 20, 3) == 0  # the pass starts after the switch


def test_hires_fix_refines_in_the_second_pass_only(counted):
    ctx, log, progress = counted
    txt2img(GenerationRequest(**{**SMALL, "steps": 4}, enable_hr=True, hr_scale=1.5, hr_denoising_strength=0.6,
                              refiner_checkpoint="r", refiner_switch_at=0.5), ctx)
    phases = [e.phase for e in progress]
    assert phases == ["sampling"] * 4 + ["hires"] * 3
    steps = _steps_by_model(log)
    assert steps["base"] == [0, 1, 2, 3, 4] and steps["refiner"] == [5, 6]  # hires pass: schedule steps 1..3


def test_switch_at_one_is_the_base_alone_and_zero_the_refiner_alone(counted, base, refiner):
    ctx, log, _ = counted
    plain = txt2img(GenerationRequest(**SMALL), PipelineContext(base))
    log.clear()
    never = txt2img(GenerationRequest(**SMALL, refiner_checkpoint="r", refiner_switch_at=1.0), ctx)
    assert {name for name, _ in log} == {"base"}
    assert plain.images[0].tobytes() == never.images[0].tobytes()
    log.clear()
    txt2img(GenerationRequest(**SMALL, refiner_checkpoint="r", refiner_switch_at=0.0), ctx)
    assert {name for name, _ in log} == {"refiner"}


def test_refiner_requests_that_cannot_run_are_clear_errors(base, refiner, files):
    with pytest.raises(RequestError, match="refiner_checkpoint.*loaded by the caller"):
        txt2img(GenerationRequest(**SMALL, refiner_checkpoint="r"), PipelineContext(base))
    with pytest.raises(RequestError, match="the SDXL refiner only refines"):
        txt2img(GenerationRequest(**SMALL), PipelineContext(refiner))


def test_the_refiner_alone_does_img2img(refiner):
    init = Image.new("RGB", (96, 64), (30, 160, 90))
    result = img2img(GenerationRequest(**SMALL, init_image=init, denoising_strength=0.4, sdxl_aesthetic_score=7.0),
                     PipelineContext(refiner))
    assert result.images[0].size == (96, 64)
    assert "SDXL aesthetic score: 7.0" in result.infotexts[0]


def test_inpaint_keeps_the_unmasked_area(base):
    init = Image.new("RGB", (96, 64), (30, 160, 90))
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (0, 0, 48, 64))
    result = inpaint(GenerationRequest(**SMALL, init_image=init, mask=mask, mask_blur=0, denoising_strength=0.9),
                     PipelineContext(base))
    assert result.images[0].getpixel((90, 32)) == (30, 160, 90)
    assert result.images[0].getpixel((10, 32)) != (30, 160, 90)


def test_size_conditioning_reaches_the_image_and_the_infotext(base):
    ctx = PipelineContext(base)
    plain = txt2img(GenerationRequest(**SMALL), ctx)
    assert "SDXL" not in plain.infotexts[0]  # defaults are not written
    same = txt2img(GenerationRequest(**SMALL, sdxl_original_width=96, sdxl_original_height=64), ctx)
    assert same.images[0].tobytes() == plain.images[0].tobytes()  # 0 means the generated size
    cropped = txt2img(GenerationRequest(**SMALL, sdxl_original_width=2048, sdxl_crop_top=32, sdxl_target_height=512),
                      ctx)
    assert cropped.images[0].tobytes() != plain.images[0].tobytes()
    fields = infotext_to_fields(parse_infotext(cropped.infotexts[0]))
    assert (fields["sdxl_original_width"], fields["sdxl_original_height"]) == (2048, 0)
    assert (fields["sdxl_crop_top"], fields["sdxl_crop_left"]) == (32, 0)
    assert (fields["sdxl_target_width"], fields["sdxl_target_height"]) == (0, 512)


@pytest.mark.parametrize(("field", "value", "allowed"), [
    ("sdxl_original_width", -1, "integer from 0 to 16384"),
    ("sdxl_crop_top", 1.5, "integer from 0 to 16384"),
    ("sdxl_aesthetic_score", 11, "number from 0.0 to 10.0"),
    ("sdxl_negative_aesthetic_score", float("nan"), "number from 0.0 to 10.0"),
    ("refiner_switch_at", 1.5, "number from 0.0 to 1.0"),
    ("refiner_checkpoint", 3, "a checkpoint name"),
])
def test_new_request_fields_are_validated(field, value, allowed):
    with pytest.raises(RequestError) as info:
        GenerationRequest(**{field: value})
    assert info.value.field == field and allowed in str(info.value)


def test_new_request_field_defaults():
    r = GenerationRequest(refiner_checkpoint=None)
    assert (r.refiner_checkpoint, r.refiner_switch_at) == ("", 0.8)
    assert (r.sdxl_original_width, r.sdxl_original_height, r.sdxl_crop_top, r.sdxl_crop_left) == (0, 0, 0, 0)
    assert (r.sdxl_target_width, r.sdxl_target_height) == (0, 0)
    assert (r.sdxl_aesthetic_score, r.sdxl_negative_aesthetic_score) == (6.0, 2.5)
