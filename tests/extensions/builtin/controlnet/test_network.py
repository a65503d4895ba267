"""Our ControlNet against diffusers' ControlNetModel on identical weights (original, bare and diffusers
layouts), and the controlled UNet against diffusers' UNet given the same residuals."""

import pytest
import torch
from safetensors.torch import save_file

from extensions.builtin.controlnet.loading import inspect_controlnet, load_controlnet
from webui.engine.models.unet import UNetModel, timestep_embedding
from webui.errors import ModelLoadError

from ....engine.models.reference import reference_sdxl_unet, reference_unet, rel_err
from ....engine.models.tiny_checkpoints import Recipe, make_checkpoint, unet_config
from .tiny import controlnet_config, diffusers_state_dict, make_controlnet, reference_controlnet

RECIPES = {"sd1": Recipe("sd1"), "sd2": Recipe("sd2"), "sdxl": Recipe("sdxl")}
LAYOUTS = ["original", "bare", "diffusers"]


def inputs(recipe, hw=(16, 24), seed=0):
    """(x, t, context, hint, y, diffusers' added_cond_kwargs) for a batch of 2."""
    gen = torch.Generator().manual_seed(seed)
    cfg = unet_config(recipe)
    x = torch.randn(2, 4, *hw, generator=gen)
    t = torch.tensor([999.0, 10.5])  # fractional, as k-samplers call the networks
    context = torch.randn(2, 77, cfg.context_dim, generator=gen)
    hint = torch.rand(2, 3, hw[0] * 8, hw[1] * 8, generator=gen)
    y, added = None, {}
    if cfg.adm_in_channels:  # SDXL: y = [pooled | 6 size embeddings]; diffusers takes them apart
        pooled = torch.randn(2, cfg.adm_in_channels - 6 * 256, generator=gen)
        time_ids = torch.tensor([[1024.0, 768, 0, 0, 1024, 768], [512, 640, 16, 32, 384, 256]])
        y = torch.cat([pooled, timestep_embedding(time_ids.flatten(), 256).reshape(2, -1)], dim=1)
        added = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}
    return x, t, context, hint, y, added


def file_in_layout(original, recipe, layout):
    if layout == "original":
        return original
    if layout == "bare":  # some ControlNet 1.1 conversions drop the prefix
        return {k.removeprefix("control_model."): v for k, v in original.items()}
    return diffusers_state_dict(original, recipe)


def save(tmp_path, tensors, name="cn.safetensors"):
    path = tmp_path / name
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("family", list(RECIPES))
def test_residuals_equal_diffusers(tmp_path, family, layout):
    recipe = RECIPES[family]
    original = make_controlnet(recipe, seed=11)
    ref = reference_controlnet(original, recipe)
    path = save(tmp_path, file_in_layout(original, recipe, layout))
    described = inspect_controlnet(path)
    assert described.config == controlnet_config(recipe)  # every hyperparameter, from shapes alone
    ours = load_controlnet(path)
    x, t, context, hint, y, added = inputs(recipe)
    with torch.inference_mode():
        got = ours(x, t, context, hint, y)
        down, mid = ref(x, t, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False, **added)
    assert len(got) == len(down) + 1
    for a, b in zip(got, [*down, mid]):
        assert rel_err(a, b) <= 1e-4


@pytest.mark.parametrize("family", list(RECIPES))
def test_the_controlled_unet_equals_diffusers_with_the_same_residuals(family):
    recipe = RECIPES[family]
    checkpoint = make_checkpoint(recipe, seed=5)
    prefix = "model.diffusion_model."
    unet = UNetModel(unet_config(recipe)).eval()
    unet.load_state_dict({k[len(prefix):]: v for k, v in checkpoint.items() if k.startswith(prefix)}, strict=True)
    ref_unet = reference_sdxl_unet(checkpoint, recipe) if family == "sdxl" else reference_unet(checkpoint, recipe)
    original = make_controlnet(recipe, seed=12)
    controlnet = reference_controlnet(original, recipe)
    x, t, context, hint, y, added = inputs(recipe, seed=1)
    with torch.inference_mode():
        down, mid = controlnet(x, t, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False, **added)
        expected = ref_unet(x, t, encoder_hidden_states=context, down_block_additional_residuals=down,
                            mid_block_additional_residual=mid, **added).sample
        plain = ref_unet(x, t, encoder_hidden_states=context, **added).sample
        got = unet(x, t, context, y, control=[*down, mid])
    assert rel_err(got, expected) <= 1e-4
    assert rel_err(got, plain) > 1e-2  # the residuals matter


def test_the_unet_refuses_a_wrong_number_of_residuals():
    recipe = RECIPES["sd1"]
    unet = UNetModel(unet_config(recipe)).eval()
    x, t, context, *_ = inputs(recipe)
    with pytest.raises(ValueError, match="control must hold"):
        unet(x, t, context, control=[torch.zeros(1)] * 3)


def test_fp16_files_load_in_the_requested_dtype(tmp_path):
    recipe = RECIPES["sd1"]
    original = make_controlnet(recipe, seed=2)
    path = save(tmp_path, {k: v.half() for k, v in original.items()})
    network = load_controlnet(path, dtype=torch.bfloat16)
    assert network.dtype == torch.bfloat16
    x, t, context, hint, _, _ = inputs(recipe)
    with torch.inference_mode():
        full = load_controlnet(save(tmp_path, original, "full.safetensors"))(x, t, context, hint)
        half = network(x.bfloat16(), t, context.bfloat16(), hint.bfloat16())
    assert rel_err(half[-1], full[-1]) < 5e-2


def test_a_controlnet_saved_with_its_whole_sd_model_loads(tmp_path):
    """ControlNet 1.0 files carry the SD model they were trained with beside `control_model.*`."""
    recipe = RECIPES["sd1"]
    original = make_controlnet(recipe, seed=3)
    path = save(tmp_path, {**make_checkpoint(recipe, seed=3), **original})
    assert inspect_controlnet(path).config.family == "sd1"
    assert load_controlnet(path).zero_convs[0][0].weight.equal(original["control_model.zero_convs.0.0.weight"])


@pytest.mark.parametrize("tensors, message", [
    ({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, "Stable Diffusion checkpoint"),
    ({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(4, 4)}, "this is a LoRA"),
    ({"adapter.body.0.resnets.0.block1.weight": torch.zeros(4, 4, 3, 3)}, "T2I-Adapter"),
    ({"lora_controlnet": torch.zeros(1), "input_hint_block.0.weight": torch.zeros(16, 3, 3, 3)}, "Control-LoRA"),
    ({"something.else": torch.zeros(2)}, "not a ControlNet"),
])
def test_other_files_are_named_for_what_they_are(tmp_path, tensors, message):
    with pytest.raises(ModelLoadError, match=message):
        inspect_controlnet(save(tmp_path, tensors))


def test_a_damaged_controlnet_is_refused_with_the_missing_part(tmp_path):
    original = make_controlnet(RECIPES["sd1"], seed=4)
    del original["control_model.zero_convs.3.0.weight"]
    with pytest.raises(ModelLoadError, match="zero_convs.3.0.weight"):
        load_controlnet(save(tmp_path, original))
