"""txt2img end to end on a tiny random model: seeds, batches, samplers, hires fix, progress, cancel."""

import pytest

from webui.engine.pipelines import PipelineContext, txt2img
from webui.engine.request import GenerationRequest
from webui.engine.sampling.registry import SAMPLERS
from webui.outputs import parse_infotext

from .conftest import pixels

SMALL = dict(width=64, height=64, steps=3, prompt="a red circle", negative_prompt="blurry")


def run(ctx, **overrides):
    return txt2img(GenerationRequest(**{**SMALL, **overrides}), ctx)


def same(a, b, tolerance=1):
    return (pixels(a) - pixels(b)).abs().max().item() <= tolerance


def test_batches_and_seeds(ctx):
    result = run(ctx, seed=1000, batch_count=2, batch_size=2, sampler_name="Euler")
    assert result.seeds == [1000, 1001, 1002, 1003]
    assert len(result.images) == 4 and all(im.size == (64, 64) for im in result.images)
    info = parse_infotext(result.infotexts[3])
    assert info.prompt == "a red circle" and info.negative_prompt == "blurry"
    assert info.params["Seed"] == "1003" and info.params["Sampler"] == "Euler" and info.params["Size"] == "64x64"
    assert info.params["Model"] == ctx.bundle.path.stem and len(info.params["Model hash"]) == 10


def test_same_seed_same_image(ctx):
    a, b = run(ctx, seed=7), run(ctx, seed=7)
    assert (pixels(a.images[0]) == pixels(b.images[0])).all()
    assert not same(a.images[0], run(ctx, seed=8).images[0], tolerance=0)


@pytest.mark.parametrize("sampler", ["Euler", "Euler a", "DPM++ 2M SDE", "DPM++ SDE"])
def test_batch_image_equals_that_seed_alone(ctx, sampler):
    batch = run(ctx, seed=500, batch_size=3, sampler_name=sampler)
    alone = run(ctx, seed=502, sampler_name=sampler)
    assert same(batch.images[2], alone.images[0])


def test_random_seed_is_resolved_and_reported(ctx):
    result = run(ctx, seed=-1)
    seed = result.seeds[0]
    assert 0 <= seed < 2**32
    assert f"Seed: {seed}," in result.infotexts[0]
    assert same(run(ctx, seed=seed).images[0], result.images[0], tolerance=0)


def test_variation_seed(ctx):
    base = run(ctx, seed=10, sampler_name="Euler")
    assert same(run(ctx, seed=10, subseed=20, subseed_strength=0.0, sampler_name="Euler").images[0], base.images[0], 0)
    full = run(ctx, seed=10, subseed=20, subseed_strength=1.0, sampler_name="Euler")
    assert same(full.images[0], run(ctx, seed=20, sampler_name="Euler").images[0])
    half = run(ctx, seed=10, subseed=20, subseed_strength=0.5, sampler_name="Euler")
    assert "Variation seed: 20, Variation seed strength: 0.5" in half.infotexts[0]


@pytest.mark.parametrize("sampler", [s.name for s in SAMPLERS])
def test_every_sampler_runs_end_to_end(ctx, sampler):
    result = run(ctx, seed=3, sampler_name=sampler, steps=4)
    assert len(result.images) == 1
    assert f"Sampler: {sampler}" in result.infotexts[0]


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_hires_fix(ctx, upscaler):
    result = run(ctx, seed=1, enable_hr=True, hr_scale=1.5, hr_upscaler=upscaler, hr_second_pass_steps=2)
    assert result.images[0].size == (96, 96)
    params = parse_infotext(result.infotexts[0]).params
    assert params["Size"] == "64x64" and params["Hires upscale"] == "1.5" and params["Hires upscaler"] == upscaler


def test_progress_events_and_previews(ctx):
    events = []
    ctx.on_progress = events.append
    run(ctx, seed=1, batch_count=2, steps=3, sampler_name="Euler")
    assert [(e.batch_index, e.step, e.total_steps) for e in events] == [(b, s, 3) for b in (0, 1) for s in (1, 2, 3)]
    preview = events[-1].preview()
    assert preview[0].size == (64, 64)


def test_interrupt_stops_the_job_and_keeps_finished_images(sd1):
    ctx = PipelineContext(sd1)
    ctx.on_progress = lambda e: ctx.cancel.interrupt() if e.batch_index == 1 and e.step == 2 else None
    result = run(ctx, seed=1, batch_count=3)
    assert result.interrupted and len(result.images) == 1 and result.seeds == [1]


def test_skip_drops_the_current_batch_only(sd1):
    ctx = PipelineContext(sd1)
    ctx.on_progress = lambda e: ctx.cancel.skip() if e.batch_index == 0 and e.step == 1 else None
    result = run(ctx, seed=1, batch_count=3)
    assert not result.interrupted and result.seeds == [2, 3]


def test_v_prediction_and_inpainting_models_generate(sd2_v, sd1_inpaint):
    assert len(run(PipelineContext(sd2_v), seed=1).images) == 1
    assert len(run(PipelineContext(sd1_inpaint), seed=1).images) == 1


def test_images_are_saved_with_infotext(ctx, tmp_path):
    ctx.output_dir = tmp_path
    result = run(ctx, seed=99, batch_size=2)
    assert [p.name for p in result.paths] == ["00000-99.png", "00001-100.png"]
    from webui.outputs import read_infotext
    assert read_infotext(result.paths[1]) == result.infotexts[1]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reduced_precision_models_generate(model_files, dtype):
    """Sampling state stays fp32 while the networks run in bf16/fp16 (the app's default on many machines)."""
    import torch

    from webui.engine.models.loading import load_checkpoint

    bundle = load_checkpoint(model_files[("sd1", "base")], dtype=getattr(torch, dtype))
    result = run(PipelineContext(bundle), seed=4, sampler_name="Euler a", batch_size=2)
    assert len(result.images) == 2
    full = run(PipelineContext(load_checkpoint(model_files[("sd1", "base")])), seed=4, sampler_name="Euler a")
    assert (pixels(result.images[0]) - pixels(full.images[0])).abs().float().mean() < 12  # close to fp32
