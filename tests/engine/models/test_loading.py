"""load_checkpoint on real files: the whole path from bytes on disk to outputs equal to the reference."""

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from webui.engine.models.loading import inspect_checkpoint, load_checkpoint, load_vae, probe_v_prediction
from webui.errors import ModelLoadError

from .reference import reference_unet, reference_vae, rel_err
from .tiny_checkpoints import TEXT_WIDTH, Recipe, ldm_original_config, make_checkpoint, unet_config, vae_config


def write(sd: dict, path: Path, metadata: dict | None = None) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=metadata)
    else:
        torch.save(sd, path)
    return path


@pytest.fixture(scope="module")
def sd1():
    return make_checkpoint(Recipe("sd1"), seed=11)


@pytest.fixture(scope="module")
def sd1_file(sd1, tmp_path_factory):
    return write(sd1, tmp_path_factory.mktemp("ckpt") / "tiny-sd1.safetensors")


def unet_inputs(recipe, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, recipe.in_channels, 16, 24, generator=gen)
    return x, torch.tensor([981.0, 1.5]), torch.randn(2, 77, TEXT_WIDTH, generator=gen)


@pytest.mark.parametrize("recipe", [Recipe("sd1"), Recipe("sd2"), Recipe("sd1", "inpaint"), Recipe("sd2", "inpaint"),
                                    Recipe("sd2", "depth")], ids=lambda r: f"{r.family}-{r.variant}")
def test_loaded_bundle_matches_reference(recipe, tmp_path):
    checkpoint = make_checkpoint(recipe, seed=21)
    bundle = load_checkpoint(write(checkpoint, tmp_path / "m.safetensors"), prediction="eps")
    assert (bundle.spec.family, bundle.spec.variant) == (recipe.family, recipe.variant)
    x, t, context = unet_inputs(recipe)
    with torch.inference_mode():
        out = bundle.unet(x, t, context)
        expected = reference_unet(checkpoint, recipe)(x, t, encoder_hidden_states=context).sample
    assert rel_err(out, expected) <= 1e-4
    image = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(2)) * 2 - 1
    ref_vae = reference_vae(checkpoint, recipe)
    with torch.inference_mode():
        mean, _ = bundle.vae.encode(image)
        assert rel_err(mean, ref_vae.encode(image).latent_dist.mean) <= 1e-4
        assert rel_err(bundle.vae.decode(mean), ref_vae.decode(mean).sample) <= 1e-4
        context = bundle.text_encoder.encode(["a red circle", "a blue square on a green background"])
    assert context.shape == (2, 77, TEXT_WIDTH)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_half_precision_files_load_into_the_requested_dtype(sd1, tmp_path, dtype):
    half = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd1.items()}
    bundle = load_checkpoint(write(half, tmp_path / "half.safetensors"), dtype=torch.float32)
    assert {p.dtype for p in bundle.unet.parameters()} == {torch.float32}
    expected = half["model.diffusion_model.out.2.weight"].float()
    assert torch.equal(bundle.unet.out[2].weight, expected)
    low = load_checkpoint(tmp_path / "half.safetensors", dtype=torch.bfloat16)
    assert {p.dtype for p in low.unet.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in low.vae.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("wrap", [False, True], ids=["plain", "state_dict-wrapper"])
def test_ckpt_files_load_through_the_weights_only_loader(sd1, tmp_path, wrap):
    data = {"state_dict": sd1, "global_step": 470000, "epoch": 6} if wrap else sd1
    bundle = load_checkpoint(write(data, tmp_path / "model.ckpt"))
    assert torch.equal(bundle.unet.out[2].weight, sd1["model.diffusion_model.out.2.weight"])


def test_ema_weights_are_used_when_asked(sd1, tmp_path):
    with_ema = dict(sd1)
    for k, v in sd1.items():
        if k.startswith("model.diffusion_model."):
            with_ema["model_ema." + k[len("model."):].replace(".", "")] = v + 1.0
    with_ema["model_ema.decay"] = torch.tensor(0.9999)
    with_ema["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    path = write(with_ema, tmp_path / "ema.safetensors")
    plain, ema = load_checkpoint(path), load_checkpoint(path, use_ema=True)
    key = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    assert torch.equal(plain.unet.input_blocks[1][1].proj_in.weight, sd1[key])
    assert torch.equal(ema.unet.input_blocks[1][1].proj_in.weight, sd1[key] + 1.0)
    with pytest.raises(ModelLoadError, match="no EMA weights"):
        load_checkpoint(write(sd1, tmp_path / "no-ema.safetensors"), use_ema=True)


@pytest.mark.parametrize("layout", ["prefixed", "bare", "bare-with-loss-and-linear-attn"])
def test_separate_vae_file_overrides_the_checkpoint_vae(sd1_file, tmp_path, layout):
    other = make_checkpoint(Recipe("sd1"), seed=99)
    vae_sd = {k: v for k, v in other.items() if k.startswith("first_stage_model.")}
    if layout != "prefixed":
        vae_sd = {k[len("first_stage_model."):]: v for k, v in vae_sd.items()}
    if layout == "bare-with-loss-and-linear-attn":
        vae_sd["loss.logvar"] = torch.zeros(())
        vae_sd["loss.discriminator.main.0.weight"] = torch.zeros(8, 3, 4, 4)
        for name in ("q", "k", "v", "proj_out"):
            key = f"decoder.mid.attn_1.{name}.weight"
            vae_sd[key] = vae_sd[key][:, :, 0, 0]
    vae_path = write(vae_sd, tmp_path / "my.vae.safetensors")
    bundle = load_checkpoint(sd1_file, vae_path=vae_path)
    assert bundle.vae_path == vae_path
    ref = reference_vae(other, Recipe("sd1"))
    z = torch.randn(1, 4, 6, 5)
    with torch.inference_mode():
        assert rel_err(bundle.vae.decode(z), ref.decode(z).sample) <= 1e-4
    assert bundle.spec.vae.scale_factor == 0.18215
    assert load_vae(vae_path).config == bundle.vae.config


def test_choosing_a_checkpoint_as_vae_is_refused(sd1_file):
    with pytest.raises(ModelLoadError, match="full checkpoint, not a VAE"):
        load_vae(sd1_file)


@pytest.fixture(scope="module")
def sd2():
    return make_checkpoint(Recipe("sd2"), seed=31)


class TestPrediction:
    def test_yaml_beside_the_checkpoint_says_v(self, sd2, tmp_path):
        path = write(sd2, tmp_path / "768-v.safetensors")
        original = ldm_original_config(unet_config(Recipe("sd2")), vae_config(Recipe("sd2")), prediction="v")
        path.with_suffix(".yaml").write_text(yaml.safe_dump(original))
        spec = load_checkpoint(path).spec
        assert spec.prediction == "v" and "yaml" in spec.prediction_reason
        assert inspect_checkpoint(path).family == "sd2"

    def test_yaml_without_parameterization_means_eps(self, sd2, tmp_path):
        path = write(sd2, tmp_path / "base.safetensors")
        path.with_suffix(".yaml").write_text(yaml.safe_dump(ldm_original_config(unet_config(Recipe("sd2")), vae_config(Recipe("sd2")))))
        assert load_checkpoint(path).spec.prediction == "eps"

    def test_explicit_choice_wins(self, sd2, tmp_path):
        path = write(sd2, tmp_path / "m.safetensors", metadata={"modelspec.prediction_type": "epsilon"})
        spec = load_checkpoint(path, prediction="v").spec
        assert (spec.prediction, spec.prediction_reason) == ("v", "chosen explicitly")
        with pytest.raises(ValueError, match="prediction must be"):
            load_checkpoint(path, prediction="x0")

    @pytest.mark.parametrize(("value", "expected"), [("v", "v"), ("v_prediction", "v"), ("epsilon", "eps")])
    def test_modelspec_metadata(self, sd2, tmp_path, value, expected):
        path = write(sd2, tmp_path / "m.safetensors", metadata={"modelspec.prediction_type": value})
        assert load_checkpoint(path).spec.prediction == expected

    def test_sd2_base_without_signals_is_probed(self, sd2, tmp_path):
        spec = load_checkpoint(write(sd2, tmp_path / "m.safetensors")).spec
        assert spec.prediction in ("eps", "v") and spec.prediction_reason.startswith("SD 2 probe")

    def test_sd1_is_eps(self, sd1_file):
        assert load_checkpoint(sd1_file).spec.prediction == "eps"

    def test_the_probe_reads_the_unet_behaviour(self):
        class FakeUNet(torch.nn.Module):
            def __init__(self, offset):
                super().__init__()
                self.config = unet_config(Recipe("sd2"))
                self.offset = offset
                self.w = torch.nn.Parameter(torch.zeros(1))

            def forward(self, x, t, context):
                return x + self.offset

        assert probe_v_prediction(FakeUNet(-2.0)) is True
        assert probe_v_prediction(FakeUNet(0.1)) is False


def test_yaml_heads_override_the_family_default(sd1, tmp_path):
    path = write(sd1, tmp_path / "m.safetensors")
    original = ldm_original_config(unet_config(Recipe("sd1")), vae_config(Recipe("sd1")))
    original["model"]["params"]["unet_config"]["params"]["num_heads"] = 4
    original["model"]["params"]["scale_factor"] = 0.5
    path.with_suffix(".yaml").write_text(yaml.safe_dump(original))
    spec = inspect_checkpoint(path)
    assert spec.unet.num_heads == 4 and spec.vae.scale_factor == 0.5
