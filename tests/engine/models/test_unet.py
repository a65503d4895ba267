"""Our UNet against diffusers' UNet2DConditionModel on identical original-layout weights."""

import pytest
import torch

from webui.engine.models.unet import UNetModel

from .reference import reference_unet, rel_err
from .tiny_checkpoints import TEXT_WIDTH, Recipe, make_checkpoint, unet_config

RECIPES = [Recipe("sd1"), Recipe("sd2"), Recipe("sd1", "inpaint"), Recipe("sd2", "inpaint"), Recipe("sd2", "depth")]


def our_unet(checkpoint, recipe):
    prefix = "model.diffusion_model."
    model = UNetModel(unet_config(recipe)).eval()
    # strict=True: every original key has a module of the same name, and nothing else exists.
    model.load_state_dict({k[len(prefix):]: v for k, v in checkpoint.items() if k.startswith(prefix)}, strict=True)
    return model


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: f"{r.family}-{r.variant}")
@pytest.mark.parametrize("latent_hw", [(24, 16), (13, 21)], ids=["nonsquare", "odd"])
def test_unet_matches_diffusers(recipe, latent_hw):
    checkpoint = make_checkpoint(recipe, seed=3)
    ours, ref = our_unet(checkpoint, recipe), reference_unet(checkpoint, recipe)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, recipe.in_channels, *latent_hw, generator=gen)
    t = torch.tensor([999.0, 10.5])  # k-diffusion samplers call the UNet at fractional timesteps
    context = torch.randn(2, 154, TEXT_WIDTH, generator=gen)  # two 77-token chunks
    with torch.inference_mode():
        out = ours(x, t, context)
        expected = ref(x, t, encoder_hidden_states=context).sample
    assert out.shape == (2, 4, *latent_hw)
    assert rel_err(out, expected) <= 1e-4


def test_unet_in_reduced_precision_stays_close_to_fp32():
    recipe = Recipe("sd1")
    model = our_unet(make_checkpoint(recipe), recipe)
    x, t, context = torch.randn(1, 4, 16, 16), torch.tensor([500.0]), torch.randn(1, 77, TEXT_WIDTH)
    with torch.inference_mode():
        full = model(x, t, context)
        half = model.to(torch.bfloat16)(x.bfloat16(), t, context.bfloat16())
    assert half.dtype == torch.bfloat16
    assert rel_err(half, full) < 5e-2
