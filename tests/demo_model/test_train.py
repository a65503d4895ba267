"""The demo model's training script: every stage runs, and what it writes is an ordinary SD 1.x
checkpoint (with its tokenizer) and an ordinary kohya LoRA, read by the app's own loaders."""

import numpy as np
import torch

from webui.demo_model import architecture as arch
from webui.demo_model.scenes import Scene, shape_mask
from webui.demo_model.controlnet_training import without_position
from webui.demo_model.train import CHECKPOINT_NAME, CONTROLNET_NAME, LORA_NAME, TrainConfig, latent_cover, run
from webui.engine.models.loading import load_checkpoint
from webui.engine.pipelines import PipelineContext, generate
from webui.engine.request import GenerationRequest

from ..extensions.helpers import load_builtin_extensions

TINY = TrainConfig(vae_steps=2, vae_full_steps=2, pool=64, unet_steps=3, unet_batch=4, snapshot_every=2, lora_steps=2,
                   controlnet_steps=2, controlnet_batch=2, controlnet_pool=8)


def test_fold_latent_scale_keeps_the_round_trip_and_scales_the_latents():
    torch.manual_seed(0)
    vae = arch.new_vae().eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        mean, logvar = vae.encode(x)
        before = vae.decode(mean)
        k = arch.fold_latent_scale(vae, latent_std=float(mean.std()))
        mean2, logvar2 = vae.encode(x)
        after = vae.decode(mean2)
    assert torch.allclose(mean2, mean * k, rtol=1e-4, atol=1e-5)
    assert abs(float((mean2 * 0.18215).std()) - 1.0) < 1e-3
    assert torch.allclose(logvar2, logvar + 2 * torch.log(torch.tensor(k)), atol=1e-4)
    assert torch.allclose(after, before, atol=1e-4)


def test_latent_cover_is_the_shape_s_share_of_each_8x8_cell():
    scene = Scene("square", "red", "blue", "large", "top left")
    cover = latent_cover(shape_mask(scene, 128))
    assert cover.shape == (16, 16)
    assert cover[4, 4] == 1.0 and cover[15, 15] == 0.0  # inside the square at the top left; the far corner
    assert np.any((cover > 0) & (cover < 1))  # edge cells are partly covered
    assert np.isclose(cover.mean(), shape_mask(scene, 128).mean())


def test_every_stage_writes_files_the_app_loads(tmp_path):
    models = tmp_path / "models"
    report = run(TINY, models, tmp_path / "work")
    assert set(report["seconds"]) == {"vae", "encode", "unet", "lora", "controlnet", "total"}
    assert (tmp_path / "work" / f"{CHECKPOINT_NAME}-step2.safetensors").is_file()  # an EMA snapshot

    checkpoint = models / "checkpoints" / f"{CHECKPOINT_NAME}.safetensors"
    bundle = load_checkpoint(checkpoint)  # the loader every user checkpoint goes through
    assert bundle.spec.family == "sd1" and bundle.spec.unet == arch.UNET_CONFIG
    assert bundle.spec.vae.ch == arch.VAE_CONFIG.ch and bundle.spec.vae.ch_mult == arch.VAE_CONFIG.ch_mult
    assert bundle.text_encoder.tokenizer.get_vocab()["circle</w>"]  # its own tokenizer, found beside it
    assert len(bundle.text_encoder.tokenizer) == bundle.spec.text_encoder.vocab_size
    assert checkpoint.stat().st_size < 25 * 1024 * 1024

    manager = load_builtin_extensions(models, tmp_path / "data")
    request = GenerationRequest(prompt=f"a red circle <lora:{LORA_NAME}:1>", width=64, height=64, steps=2, seed=1)
    result = generate(request, PipelineContext(bundle, hooks=manager.hooks_for_job()))
    assert not result.notices  # every layer of the LoRA file matched a layer of the model
    assert result.images[0].size == (64, 64)

    # The ControlNet, through the ControlNet extension as users' files go: original layout, made for SD 1.x.
    unit = {"model": f"{CONTROLNET_NAME}.safetensors", "module": "canny", "image": result.images[0]}
    request = GenerationRequest(prompt="a red circle", width=64, height=64, steps=2, seed=1,
                                extensions={"controlnet": {"units": [unit]}})
    manager.check_request(request)
    result = generate(request, PipelineContext(bundle, hooks=manager.hooks_for_job()))
    assert not result.notices and f"Model: {CONTROLNET_NAME} [" in result.infotexts[0]


def test_captions_can_lose_their_position_for_the_controlnet():
    assert without_position("a red circle at the top left on a blue background") == "a red circle on a blue background"
    assert without_position("a small square in the centre") == "a small square"
    assert without_position("a red circle on a blue background") == "a red circle on a blue background"
