"""The full-size SD 1.5 layout end to end: a 4 GB random checkpoint written to disk, loaded by our
loader, and compared with diffusers on the same weights (UNet, VAE and CLIP-L text encoder)."""

import gc

import pytest
import torch
from safetensors.torch import load_file, save_file

from webui.engine.models.loading import load_checkpoint

from .reference import reference_text_encoder, reference_unet, reference_vae, rel_err
from .tiny_checkpoints import Recipe, make_checkpoint

pytestmark = pytest.mark.slow

SD15 = Recipe("sd1", full_size=True)


@pytest.fixture(scope="module")
def sd15_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd15") / "sd15-random.safetensors"
    save_file(make_checkpoint(SD15, seed=15), str(path))
    gc.collect()
    return path


@pytest.fixture(scope="module")
def ours(sd15_file):
    return load_checkpoint(sd15_file)


def test_published_parameter_counts(ours):
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours.unet) == 859_520_964
    assert count(ours.vae) == 83_653_863
    assert count(ours.text_encoder.model) == 123_060_480


def test_full_size_networks_match_diffusers(ours, sd15_file):
    checkpoint = load_file(str(sd15_file))
    gen = torch.Generator().manual_seed(0)
    x, context = torch.randn(2, 4, 16, 24, generator=gen), torch.randn(2, 77, 768, generator=gen)
    t = torch.tensor([999.0, 250.5])
    with torch.inference_mode():
        out = ours.unet(x, t, context)
        expected = reference_unet(checkpoint, SD15)(x, t, encoder_hidden_states=context).sample
        assert rel_err(out, expected) <= 1e-4
        del expected
        gc.collect()

        ref_vae = reference_vae(checkpoint, SD15)
        image = torch.rand(2, 3, 64, 96, generator=gen) * 2 - 1
        mean, _ = ours.vae.encode(image)
        assert rel_err(mean, ref_vae.encode(image).latent_dist.mean) <= 1e-4
        assert rel_err(ours.vae.decode(mean), ref_vae.decode(mean).sample) <= 1e-4

        ref_text = reference_text_encoder(checkpoint, 768, 12, "quick_gelu", openclip=False)
        ids = torch.tensor(ours.text_encoder.tokenize_chunks("a photograph of an astronaut riding a horse")
                           + ours.text_encoder.tokenize_chunks(""))
        hidden = ref_text(input_ids=ids, output_hidden_states=True)
        assert rel_err(ours.text_encoder.encode_chunks(ids), hidden.last_hidden_state) <= 1e-4
        skip2 = ref_text.final_layer_norm(hidden.hidden_states[-2])
        assert rel_err(ours.text_encoder.encode_chunks(ids, clip_skip=2), skip2) <= 1e-4
