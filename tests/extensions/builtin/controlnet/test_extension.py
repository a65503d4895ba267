"""The ControlNet extension end to end: units through the extension manager like any extension, how units
combine, when they act, the infotext round trip, and the depth tab on checkpoints that are not depth models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from extensions.builtin.controlnet.control import ActiveUnit, ControlledModel
from extensions.builtin.controlnet.loading import load_controlnet
from extensions.builtin.controlnet.units import ControlUnit
from webui.engine.models.loading import load_checkpoint
from webui.engine.pipelines import PipelineContext, generate
from webui.engine.request import GenerationRequest
from webui.engine.sampling.denoisers import SamplingState
from webui.errors import RequestError
from webui.outputs import parse_infotext

from ....engine.models.tiny_checkpoints import Recipe, make_checkpoint, unet_config
from ....engine.pipelines.conftest import pixels
from ...helpers import load_builtin_extensions
from .tiny import make_controlnet

BASE = dict(width=64, height=64, steps=4, prompt="a circle", sampler_name="Euler", seed=9, cfg_scale=5.0)
CONTROLNETS = {"tiny-canny-sd1": ("sd1", 21), "tiny-sd2": ("sd2", 22), "tiny-depth-sd1": ("sd1", 23)}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("controlnet-models")
    (root / "controlnet").mkdir()
    for name, (family, seed) in CONTROLNETS.items():
        save_file(make_controlnet(Recipe(family), seed=seed), str(root / "controlnet" / f"{name}.safetensors"))
    checkpoint = root / "tiny-sd1.safetensors"
    save_file(make_checkpoint(Recipe("sd1"), seed=4), str(checkpoint))
    return root, load_checkpoint(checkpoint)


@pytest.fixture
def manager(models, tmp_path):
    return load_builtin_extensions(models[0], tmp_path / "data", estimate_depth=lambda im: im.convert("L"))


def control_image(x0=8, y0=8, x1=40, y1=40) -> Image.Image:
    image = Image.new("RGB", (64, 64))
    image.paste((255, 255, 255), (x0, y0, x1, y1))
    return image


def run(models, manager, **fields):
    request = GenerationRequest(**{**BASE, **fields})
    manager.check_request(request)
    return generate(request, PipelineContext(models[1], hooks=manager.hooks_for_job()))


def unit(**fields):
    return {"units": [{"model": "tiny-canny-sd1", "image": control_image(), "module": "none", **fields}]}


def test_a_unit_guides_the_image_and_weight_zero_changes_nothing(models, manager):
    plain = run(models, manager)
    guided = run(models, manager, extensions={"controlnet": unit()})
    silent = run(models, manager, extensions={"controlnet": unit(weight=0.0)})
    assert not guided.notices
    assert (pixels(guided.images[0]) != pixels(plain.images[0])).any()
    assert (pixels(silent.images[0]) == pixels(plain.images[0])).all()  # adding zeros is exact


def test_the_ui_s_flat_parameters_work_like_units(models, manager):
    flat = {"unit0_enabled": True, "unit0_model": "tiny-canny-sd1.safetensors", "unit0_image": control_image(),
            "unit0_module": "none", "unit0_weight": 1.0, "unit1_enabled": False, "unit1_model": ""}
    a = run(models, manager, extensions={"controlnet": flat})
    b = run(models, manager, extensions={"controlnet": unit()})
    assert (pixels(a.images[0]) == pixels(b.images[0])).all()


def test_infotext_names_each_unit_and_reads_back_into_the_controls(models, manager):
    result = run(models, manager, extensions={"controlnet": {"units": [
        {"model": "tiny-canny-sd1", "image": control_image(), "module": "canny", "weight": 0.8,
         "guidance_end": 0.5, "control_mode": "My prompt is more important"},
        {"model": "tiny-depth-sd1", "image": control_image(), "module": "depth"}]}})
    params = parse_infotext(result.infotexts[0]).a1111_params()
    assert params["ControlNet 0"].startswith("Module: canny, Model: tiny-canny-sd1 [")
    assert "Weight: 0.8" in params["ControlNet 0"] and "Guidance End: 0.5" in params["ControlNet 0"]
    assert "Module: depth, Model: tiny-depth-sd1 [" in params["ControlNet 1"]
    values = {record.name: v for record, v in manager.call("read_infotext", {"params": params})}["controlnet"]
    assert values["unit0_module"] == "canny" and values["unit0_model"] == "tiny-canny-sd1.safetensors"  # as listed
    assert values["unit0_weight"] == 0.8 and values["unit0_control_mode"] == "My prompt is more important"
    assert values["unit1_module"] == "depth" and values["unit1_enabled"] is True


@pytest.mark.parametrize("fields, fragment", [
    ({"model": "missing"}, "controlnet.units[].model: 'missing' is not allowed; expected a name from the controlnet list"),
    ({"weight": -1}, "controlnet.units[0].weight"),
    ({"image": None}, "controlnet.units[0].image: None is not allowed; expected a control image"),
])
def test_bad_units_are_refused_before_the_job_is_queued(models, manager, fields, fragment):
    request = GenerationRequest(**BASE, extensions={"controlnet": unit(**fields)})
    with pytest.raises(RequestError) as info:
        manager.check_request(request)
    assert fragment in str(info.value)
    assert manager.record("controlnet").failures == 0  # the user's error, not the extension's


def test_a_controlnet_for_another_family_is_refused_by_name(models, manager):
    with pytest.raises(RequestError, match=r"controlnet.units\[0\].model: 'tiny-sd2' .* a ControlNet for SD 1.x "
                                           r"models \(this one is for SD 2.x models"):
        run(models, manager, extensions={"controlnet": unit(model="tiny-sd2")})


def test_img2img_without_a_unit_image_uses_the_input_image(models, manager):
    source = control_image(20, 10, 60, 50)
    common = dict(init_image=source, denoising_strength=0.7)
    implicit = run(models, manager, **common, extensions={"controlnet": unit(image=None)})
    explicit = run(models, manager, **common, extensions={"controlnet": unit(image=source)})
    assert (pixels(implicit.images[0]) == pixels(explicit.images[0])).all()


def test_hires_fix_and_inpainting_run_with_a_unit(models, manager):
    hires = run(models, manager, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2,
                extensions={"controlnet": unit()})
    assert hires.images[0].size == (96, 96)
    mask = Image.new("L", (64, 64))
    mask.paste(255, (16, 16, 48, 48))
    inpainted = run(models, manager, init_image=control_image(), mask=mask, inpaint_full_res=True,
                    extensions={"controlnet": unit(image=None)})
    assert inpainted.images[0].size == (64, 64)


def test_networks_are_loaded_once_and_let_go_when_no_longer_used(models, manager):
    run(models, manager, extensions={"controlnet": unit()})
    state = manager.record("controlnet").context.state
    first = [network for network, _ in state["networks"].values()]
    run(models, manager, extensions={"controlnet": unit(weight=0.5)})
    assert [network for network, _ in state["networks"].values()] == first  # the same object: not loaded again
    run(models, manager, extensions={"controlnet": unit(model="tiny-depth-sd1")})
    assert len(state["networks"]) == 1 and [n for n, _ in state["networks"].values()] != first


def test_networks_follow_the_unet_s_offload_mode_and_attention(models, manager):
    """On this CPU-only machine the moves are no-ops; the placement's bookkeeping is what is checked
    (as in tests/engine/memory/test_offload.py)."""
    from webui.engine.memory.attention import AttentionConfig, set_attention
    from webui.engine.memory.policy import MemoryPolicy, apply_policy

    bundle = models[1]
    plain = run(models, manager, extensions={"controlnet": unit()})
    sliced = AttentionConfig("sliced", 16)
    try:
        apply_policy(bundle, MemoryPolicy())  # places the networks: bundle.placement exists from here
        bundle.placement.set_mode("sequential")
        set_attention(bundle.unet, sliced)
        offloaded = run(models, manager, extensions={"controlnet": unit()})
        network, placement = next(iter(manager.record("controlnet").context.state["networks"].values()))
        assert placement.mode == "sequential" and placement.moves > 0  # layer by layer, as the UNet
        assert all(m.attention_config == sliced for m in network.modules() if hasattr(m, "attention_config"))
        assert (pixels(offloaded.images[0]) - pixels(plain.images[0])).abs().max() <= 1  # sliced: rounding only
        bundle.placement.set_mode("none")
        run(models, manager, extensions={"controlnet": unit()})
        assert placement.mode == "none"
    finally:
        apply_policy(bundle, MemoryPolicy())


# --- how units combine, and when they act -----------------------------------------------------------------

class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, x, t, context, **kwargs):
        self.calls.append(kwargs.get("control"))
        return x


@pytest.fixture(scope="module")
def networks(models):
    folder = models[0] / "controlnet"
    return [load_controlnet(folder / "tiny-canny-sd1.safetensors"), load_controlnet(folder / "tiny-depth-sd1.safetensors")]


def call_inputs(batch=2):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, 8, 8, generator=gen)
    context = torch.randn(batch, 77, unet_config(Recipe("sd1")).context_dim, generator=gen)
    return x, torch.full((batch,), 500.0), context


def hint(image):
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]


def test_units_add_their_residuals_scaled_by_weight_and_mode(networks):
    images = [control_image(), control_image(30, 30, 60, 60)]
    units = [ControlUnit(model="a", weight=0.7), ControlUnit(model="b", weight=1.3,
                                                             control_mode="My prompt is more important")]
    recorder = Recorder()
    x, t, context = call_inputs()
    model = ControlledModel(recorder, [ActiveUnit(u, n, im) for u, n, im in zip(units, networks, images)],
                            SamplingState(), downscale=8)
    with torch.inference_mode():
        model(x, t, context)
        first = networks[0](x, t, context, hint(images[0]).expand(2, -1, -1, -1))
        second = networks[1](x, t, context, hint(images[1]).expand(2, -1, -1, -1))
    n = len(first)
    soft = [1.3 * 0.825 ** (n - 1 - i) for i in range(n)]  # the original ControlNet's "guess mode" weights
    expected = [0.7 * a + s * b for a, b, s in zip(first, second, soft)]
    got = recorder.calls[0]
    assert len(got) == n == 10  # the tiny UNet: 9 input blocks, then the middle block
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, atol=1e-6)


def test_controlnet_is_more_important_leaves_the_negative_prompt_s_rows_alone(networks):
    image = control_image()
    recorder = Recorder()
    x, t, context = call_inputs(batch=4)  # 2 images: [cond, cond, uncond, uncond]
    sampling = SamplingState(uncond=(False, False, True, True))
    unit = ControlUnit(model="a", weight=1.0, control_mode="ControlNet is more important")
    ControlledModel(recorder, [ActiveUnit(unit, networks[0], image)], sampling, downscale=8)(x, t, context)
    with torch.inference_mode():
        cond_only = networks[0](x[:2], t[:2], context[:2], hint(image).expand(2, -1, -1, -1))
    scales = unit.scales(len(cond_only))
    for got, residual, s in zip(recorder.calls[0], cond_only, scales):
        assert torch.allclose(got[:2], residual * s, atol=1e-6) and (got[2:] == 0).all()


@pytest.mark.parametrize("start, end", [(0.0, 1.0), (0.2, 0.7), (0.5, 1.0), (0.0, 0.25), (0.3, 0.3)])
def test_guidance_start_and_end_pick_the_steps_as_diffusers_does(networks, start, end):
    steps = 10
    recorder = Recorder()
    sampling = SamplingState(total_steps=steps)
    model = ControlledModel(recorder, [ActiveUnit(ControlUnit(model="a", guidance_start=start, guidance_end=end),
                                                  networks[0], control_image())], sampling, downscale=8)
    x, t, context = call_inputs()
    for step in range(steps):
        sampling.step = step
        model(x, t, context)
    acted = [call is not None for call in recorder.calls]
    # diffusers' StableDiffusionControlNetPipeline: keep_i = 1 - (i / N < start or (i + 1) / N > end)
    keep = [not (i / steps < start or (i + 1) / steps > end) for i in range(steps)]
    assert acted == keep


def test_the_engine_tells_wrappers_the_step_and_the_pass_length(models):
    seen = []

    from webui.engine.pipelines.hooks import PipelineHooks

    class Hooks(PipelineHooks):
        def wrap_model(self, model, request, bundle, sampling):
            def wrapped(x, t, context, **kwargs):
                seen.append((sampling.step, sampling.total_steps, sampling.uncond))
                return model(x, t, context, **kwargs)
            return wrapped

    generate(GenerationRequest(**{**BASE, "steps": 5}), PipelineContext(models[1], hooks=Hooks()))
    assert [(s, n) for s, n, _ in seen] == [(i, 5) for i in range(5)]  # Euler: one network call per step
    assert all(u == (False, True) for _, _, u in seen)  # [cond | uncond] for one image
    seen.clear()
    generate(GenerationRequest(**{**BASE, "steps": 10}, init_image=control_image(), denoising_strength=0.5),
             PipelineContext(models[1], hooks=Hooks()))
    assert {n for _, n, _ in seen} == {6} and [s for s, _, _ in seen] == list(range(6))  # only the steps run


# --- the depth tab on a checkpoint that is not a depth model ----------------------------------------------

def test_the_depth_tab_on_a_plain_model_uses_a_depth_controlnet_of_its_family(models, manager):
    depth_map = Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1)), "L")
    result = run(models, manager, depth_map=depth_map)
    params = parse_infotext(result.infotexts[0]).a1111_params()
    assert params["ControlNet 0"].startswith("Module: none, Model: tiny-depth-sd1 [")
    estimated = run(models, manager, init_image=control_image(), depth=True, denoising_strength=0.6)
    assert "Module: depth, Model: tiny-depth-sd1" in parse_infotext(estimated.infotexts[0]).a1111_params()["ControlNet 0"]


def test_the_depth_tab_without_a_depth_controlnet_says_what_is_needed(models, tmp_path):
    (tmp_path / "models" / "controlnet").mkdir(parents=True)
    manager = load_builtin_extensions(tmp_path / "models", tmp_path / "data")
    with pytest.raises(RequestError, match="a depth ControlNet for SD 1.x models in models/controlnet"):
        run(models, manager, depth_map=Image.new("L", (64, 64), 128))


@pytest.mark.parametrize("recipe", [Recipe("sdxl"), Recipe("sd1", "inpaint")], ids=["sdxl", "sd1-inpainting"])
def test_sdxl_and_inpainting_models_take_units_too(tmp_path, recipe):
    """SDXL ControlNets also read the size vector y; inpainting UNets' extra channels are not the ControlNet's."""
    (tmp_path / "controlnet").mkdir()
    save_file(make_controlnet(Recipe(recipe.family), seed=5), str(tmp_path / "controlnet" / "cn.safetensors"))
    save_file(make_checkpoint(recipe, seed=6), str(tmp_path / "model.safetensors"))
    bundle = load_checkpoint(tmp_path / "model.safetensors")
    manager = load_builtin_extensions(tmp_path, tmp_path / "data")
    fields = dict(BASE, batch_size=2, prompt="a cat AND a hat:0.5")  # 3 CFG halves of 2 images
    if recipe.variant == "inpaint":
        mask = Image.new("L", (64, 64))
        mask.paste(255, (0, 0, 32, 64))
        fields.update(init_image=control_image(), mask=mask)
    plain = generate(GenerationRequest(**fields), PipelineContext(bundle, hooks=manager.hooks_for_job()))
    guided = generate(GenerationRequest(**fields, extensions={"controlnet": unit(model="cn")}),
                      PipelineContext(bundle, hooks=manager.hooks_for_job()))
    assert len(guided.images) == 2 and not guided.notices
    assert any((pixels(a) != pixels(b)).any() for a, b in zip(guided.images, plain.images))
