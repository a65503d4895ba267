"""Our AutoencoderKL against diffusers' AutoencoderKL on identical original-layout weights."""

import pytest
import torch

from webui.engine.models.vae import AutoencoderKL

from .reference import reference_vae, rel_err
from .tiny_checkpoints import Recipe, make_checkpoint, vae_config


def our_vae(checkpoint, recipe):
    prefix = "first_stage_model."
    model = AutoencoderKL(vae_config(recipe)).eval()
    model.load_state_dict({k[len(prefix):]: v for k, v in checkpoint.items() if k.startswith(prefix)}, strict=True)
    return model


@pytest.mark.parametrize("size", [(48, 40), (64, 64)])
def test_vae_encode_and_decode_match_diffusers(size):
    recipe = Recipe("sd1")
    checkpoint = make_checkpoint(recipe, seed=5)
    ours, ref = our_vae(checkpoint, recipe), reference_vae(checkpoint, recipe)
    image = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.inference_mode():
        mean, logvar = ours.encode(image)
        ref_posterior = ref.encode(image).latent_dist
        assert mean.shape == (2, 4, size[0] // 8, size[1] // 8)
        assert rel_err(mean, ref_posterior.mean) <= 1e-4
        assert rel_err(logvar, ref_posterior.logvar) <= 1e-4
        decoded = ours.decode(mean)
        assert decoded.shape == (2, 3, *size)
        assert rel_err(decoded, ref.decode(mean).sample) <= 1e-4


def test_vae_logvar_is_clamped_like_the_reference():
    recipe = Recipe("sd1")
    model = our_vae(make_checkpoint(recipe), recipe)
    with torch.no_grad():
        model.quant_conv.bias[4:] = 100.0  # force a huge log-variance
        _, logvar = model.encode(torch.zeros(1, 3, 16, 16))
    assert logvar.max().item() == 20.0
