"""SDXL base and refiner: detection, the full-size layouts on the meta device, and our networks against
diffusers' single-file conversions of the same random ORIGINAL-layout (sgm) weights at reduced widths."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    create_unet_diffusers_config_from_ldm,
    infer_diffusers_model_type,
)
from safetensors.torch import save_file

from webui.engine.models.detection import detect_model_spec
from webui.engine.models.loading import load_checkpoint
from webui.engine.models.sdxl_text_encoder import SDXLTextEncoder
from webui.engine.models.specs import SDXL_LATENT_SCALE
from webui.engine.models.text_encoders import openclip_to_transformers
from webui.engine.models.unet import UNetModel, timestep_embedding
from webui.engine.pipelines import PipelineContext
from webui.engine.pipelines.steps import decode_pixels
from webui.errors import ModelLoadError, UnsupportedModelError

from .reference import reference_bigg, reference_clip_l, reference_sdxl_unet, reference_vae, rel_err
from .tiny_checkpoints import (
    SDXL_BIGG,
    SDXL_CLIP_L,
    SDXL_PREFIXES,
    Recipe,
    checkpoint_shapes,
    make_checkpoint,
    sgm_original_config,
    unet_config,
    vae_config,
)

BASE, REFINER, INPAINT = Recipe("sdxl"), Recipe("sdxl_refiner"), Recipe("sdxl", "inpaint")
FULL_BASE, FULL_REFINER = Recipe("sdxl", full_size=True), Recipe("sdxl_refiner", full_size=True)
PROMPTS = ["a photo of a cat", "an astronaut riding a horse on the moon, highly detailed, 8k", ""]


def meta_tensors(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


# --- detection ------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", [FULL_BASE, FULL_REFINER, BASE, REFINER], ids=["base", "refiner", "tiny-base", "tiny-refiner"])
def test_detection_infers_every_hyperparameter(recipe):
    spec = detect_model_spec(checkpoint_shapes(recipe))
    assert spec.family == recipe.family and spec.variant == "base" and spec.prediction == "eps"
    assert spec.unet == unet_config(recipe)  # depth per level, no top-level attention, adm, context width
    assert spec.vae == vae_config(recipe) and spec.vae.scale_factor == SDXL_LATENT_SCALE
    assert spec.unet.num_head_channels == 64 and spec.unet.use_linear_in_transformer


def test_full_size_base_text_encoders_are_clip_l_and_bigg():
    spec = detect_model_spec(checkpoint_shapes(FULL_BASE))
    assert spec.label == "SDXL" and spec.unet.adm_in_channels == 2816 and spec.unet.context_dim == 2048
    assert spec.unet.transformer_depth == (0, 2, 10) and spec.unet.attention_levels == (False, True, True)
    l, g = spec.text_encoders
    assert (l.layout, l.prefix, l.width, l.layers, l.heads, l.activation) == (
        "clip", SDXL_PREFIXES["clip_l"], 768, 12, 12, "quick_gelu")
    assert (l.pad_token_id, l.default_layer, l.final_norm, l.projection_dim) == (49407, "penultimate", False, 0)
    assert (g.layout, g.prefix, g.width, g.layers, g.heads, g.activation) == (
        "openclip", SDXL_PREFIXES["bigg"], 1280, 32, 20, "gelu")
    assert (g.pad_token_id, g.default_layer, g.final_norm, g.projection_dim) == (0, "penultimate", False, 1280)


def test_full_size_refiner_has_only_bigg():
    spec = detect_model_spec(checkpoint_shapes(FULL_REFINER))
    assert spec.label == "SDXL refiner" and spec.text_encoder_2 is None
    assert spec.text_encoder.prefix == SDXL_PREFIXES["refiner_bigg"] and spec.text_encoder.projection_dim == 1280
    assert (spec.unet.model_channels, spec.unet.channel_mult, spec.unet.adm_in_channels, spec.unet.context_dim) == (
        384, (1, 2, 4, 4), 2560, 1280)
    assert spec.unet.transformer_depth == (0, 4, 4, 0) and spec.unet.transformer_depth_middle == 4


def test_sdxl_inpainting_layout_is_refused_clearly():
    shapes = checkpoint_shapes(INPAINT)
    assert shapes["model.diffusion_model.input_blocks.0.0.weight"][1] == 9
    with pytest.raises(UnsupportedModelError, match="SDXL inpaint is not supported yet"):
        detect_model_spec(shapes, "x.safetensors")


def test_a_conditioning_vector_of_the_wrong_width_is_a_clear_error():
    shapes = checkpoint_shapes(BASE)
    key = "model.diffusion_model.label_emb.0.0.weight"
    shapes[key] = (shapes[key][0], shapes[key][1] + 256)
    with pytest.raises(ModelLoadError, match=r"conditioning vector .* is 1888 wide, but the pooled text \(96\)"):
        detect_model_spec(shapes)


def test_a_refiner_without_text_projection_is_damaged():
    shapes = {k: v for k, v in checkpoint_shapes(REFINER).items() if not k.endswith("text_projection")}
    with pytest.raises(ModelLoadError, match="incomplete or damaged SDXL refiner layout"):
        detect_model_spec(shapes)


# --- the full-size layouts, on the meta device (no data) -------------------------------------------------


@pytest.mark.parametrize(("recipe", "tensors", "parameters", "model_type"), [
    (FULL_BASE, 1680, 2_567_463_684, "xl_base"),  # the published SDXL UNet count (benchmarking.md)
    (FULL_REFINER, 1220, 2_259_526_660, "xl_refiner"),
], ids=["base", "refiner"])
def test_full_size_unet_layout_is_sgms(recipe, tensors, parameters, model_type):
    shapes = checkpoint_shapes(recipe)
    assert infer_diffusers_model_type(meta_tensors(shapes)) == model_type  # diffusers sees the file layout
    spec = detect_model_spec(shapes)
    with torch.device("meta"):
        ours = UNetModel(spec.unet)
    names = set(ours.state_dict())
    file_unet = {k.removeprefix("model.diffusion_model."): s for k, s in shapes.items() if k.startswith("model.diffusion_model.")}
    assert names == set(file_unet) and len(names) == tensors
    assert sum(p.numel() for p in ours.parameters()) == parameters
    # Independent of how the file keys were made: diffusers' converter maps exactly our names onto
    # exactly diffusers' SDXL UNet, every shape equal.
    sd = {"model.diffusion_model." + k: v for k, v in ours.state_dict().items()}
    config = create_unet_diffusers_config_from_ldm(sgm_original_config(spec.unet, spec.vae), sd)
    assert config["addition_embed_type"] == "text_time"  # the full-size widths select SDXL's embedding
    with torch.device("meta"):
        reference = UNet2DConditionModel(**config)
    converted, expected = convert_ldm_unet_checkpoint(sd, config), reference.state_dict()
    assert set(converted) == set(expected)
    assert all(converted[k].shape == expected[k].shape for k in expected)
    assert sum(p.numel() for p in reference.parameters()) == parameters
    assert sum(k.startswith("first_stage_model.") for k in shapes) == 248


# --- numerics against diffusers, reduced widths -----------------------------------------------------------


def _y(recipe: Recipe, pooled: torch.Tensor, time_ids: torch.Tensor) -> torch.Tensor:
    return torch.cat([pooled, timestep_embedding(time_ids.flatten(), 256).reshape(pooled.shape[0], -1)], dim=1)


@pytest.mark.parametrize("recipe", [BASE, REFINER], ids=["base", "refiner"])
@pytest.mark.parametrize("latent_hw", [(24, 16), (13, 21)], ids=["nonsquare", "odd"])
def test_unet_with_added_conditioning_matches_diffusers(recipe, latent_hw):
    checkpoint = make_checkpoint(recipe, seed=3)
    prefix = "model.diffusion_model."
    ours = UNetModel(unet_config(recipe)).eval()
    ours.load_state_dict({k[len(prefix):]: v for k, v in checkpoint.items() if k.startswith(prefix)}, strict=True)
    ref = reference_sdxl_unet(checkpoint, recipe)
    cfg = unet_config(recipe)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, *latent_hw, generator=gen)
    t = torch.tensor([999.0, 10.5])
    context = torch.randn(2, 154, cfg.context_dim, generator=gen)  # two 77-token chunks
    pooled = torch.randn(2, SDXL_BIGG["projection"], generator=gen)
    if recipe.family == "sdxl":  # (orig h, orig w, crop top, crop left, target h, target w)
        time_ids = torch.tensor([[1024.0, 768, 0, 0, 1024, 768], [512, 640, 16, 32, 384, 256]])
    else:  # (orig h, orig w, crop top, crop left, aesthetic score)
        time_ids = torch.tensor([[1024.0, 768, 0, 0, 6.0], [512, 640, 16, 32, 2.5]])
    with torch.inference_mode():
        out = ours(x, t, context, _y(recipe, pooled, time_ids))
        expected = ref(x, t, encoder_hidden_states=context,
                       added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        moved = ref(x, t, encoder_hidden_states=context,
                    added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids + 8}).sample
    assert out.shape == (2, 4, *latent_hw)
    assert rel_err(out, expected) <= 1e-4
    assert rel_err(moved, expected) > 1e-3  # the added conditioning really reaches the output


def test_unet_refuses_a_missing_or_misshapen_y():
    cfg = unet_config(BASE)
    unet = UNetModel(cfg).eval()
    x, t, context = torch.randn(1, 4, 8, 8), torch.tensor([500.0]), torch.randn(1, 77, cfg.context_dim)
    with pytest.raises(ValueError, match="conditioning vector y of width 1632"):
        unet(x, t, context)
    with pytest.raises(ValueError, match=r"y must be \(batch 1, 1632\)"):
        unet(x, t, context, torch.zeros(1, 1631))


@pytest.fixture(scope="module")
def base_file(tmp_path_factory):
    checkpoint = make_checkpoint(BASE, seed=21)
    path = tmp_path_factory.mktemp("sdxl") / "tiny-sdxl.safetensors"
    save_file(checkpoint, str(path))
    return checkpoint, path


@pytest.fixture(scope="module")
def refiner_file(tmp_path_factory):
    checkpoint = make_checkpoint(REFINER, seed=22)
    path = tmp_path_factory.mktemp("sdxl") / "tiny-sdxl-refiner.safetensors"
    save_file(checkpoint, str(path))
    return checkpoint, path


@pytest.fixture(scope="module")
def base(base_file):
    return load_checkpoint(base_file[1])


def _ids(encoder, prompts) -> torch.Tensor:
    return torch.tensor([encoder.tokenize_chunks(p)[0] for p in prompts])


def test_base_text_encoders_and_pooled_output_match_diffusers(base_file, base):
    checkpoint, _ = base_file
    te = base.text_encoder
    assert isinstance(te, SDXLTextEncoder) and te.width == SDXL_CLIP_L["width"] + SDXL_BIGG["width"]
    clip_l, bigg = te.encoders
    assert clip_l.model.config.num_hidden_layers == SDXL_CLIP_L["layers"] - 1  # its last block is never used
    ref_l = reference_clip_l(checkpoint, SDXL_PREFIXES["clip_l"], SDXL_CLIP_L["width"], SDXL_CLIP_L["layers"])
    ref_g = reference_bigg(checkpoint, SDXL_PREFIXES["bigg"], SDXL_BIGG["width"], SDXL_BIGG["layers"],
                           SDXL_BIGG["projection"])
    ids_l, ids_g = _ids(clip_l, PROMPTS), _ids(bigg, PROMPTS)
    assert ids_l[2, 2:].eq(49407).all() and ids_g[2, 2:].eq(0).all()  # CLIP-L pads with the end token, bigG with 0
    context, pooled = te.encode_with_pooled(PROMPTS)
    with torch.no_grad():
        hidden_l = ref_l(input_ids=ids_l, output_hidden_states=True).hidden_states
        out_g = ref_g(input_ids=ids_g, output_hidden_states=True)
    w = SDXL_CLIP_L["width"]
    assert context.shape == (3, 77, te.width) and pooled.shape == (3, SDXL_BIGG["projection"])
    assert rel_err(context[..., :w], hidden_l[-2]) <= 1e-4  # penultimate, no final layer norm
    assert rel_err(context[..., w:], out_g.hidden_states[-2]) <= 1e-4
    assert rel_err(pooled, out_g.text_embeds) <= 1e-4  # ln_final(last)[first end] @ P
    # clip skip 2: one block further back in both encoders; the pooled output does not move
    context2, pooled2 = te.encode_with_pooled(PROMPTS, clip_skip=2)
    assert rel_err(context2[..., :w], hidden_l[-3]) <= 1e-4
    assert rel_err(context2[..., w:], out_g.hidden_states[-3]) <= 1e-4
    assert torch.equal(pooled2, pooled)


def test_refiner_text_encoder_and_pooled_output_match_diffusers(refiner_file):
    checkpoint, path = refiner_file
    te = load_checkpoint(path).text_encoder
    assert len(te.encoders) == 1 and te.width == SDXL_BIGG["width"]
    ref = reference_bigg(checkpoint, SDXL_PREFIXES["refiner_bigg"], SDXL_BIGG["width"], SDXL_BIGG["layers"],
                         SDXL_BIGG["projection"])
    context, pooled = te.encode_with_pooled(PROMPTS)
    with torch.no_grad():
        out = ref(input_ids=_ids(te.first, PROMPTS), output_hidden_states=True)
    assert rel_err(context, out.hidden_states[-2]) <= 1e-4
    assert rel_err(pooled, out.text_embeds) <= 1e-4


def test_long_prompts_chunk_alike_and_pool_the_first_chunk(base):
    te = base.text_encoder
    long_prompt = "cat " * 100
    assert te.count_tokens(long_prompt) == 100 and len(te.tokenize_chunks(long_prompt)) == 2
    context, pooled = te.encode_with_pooled(["a cat", long_prompt])
    assert context.shape == (2, 154, te.width)
    first_chunk = te.encode_with_pooled(["cat " * 75])[1]
    assert torch.allclose(pooled[1], first_chunk[0], atol=1e-6)  # A1111: the pooled vector of chunk 1
    assert te.encode(["a cat"], min_chunks=3).shape == (1, 231, te.width)
    with pytest.raises(ValueError, match="clip_skip must be an integer in 1..2"):
        te.encode(["a cat"], clip_skip=3)  # 3 layers: penultimate and one more


def test_vae_decodes_with_the_sdxl_scale(base_file, base):
    checkpoint, _ = base_file
    assert base.spec.vae.scale_factor == SDXL_LATENT_SCALE
    ref = reference_vae(checkpoint, BASE)
    assert ref.config.scaling_factor == SDXL_LATENT_SCALE
    latents = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(4))
    ours = decode_pixels(PipelineContext(base), latents)
    with torch.inference_mode():
        expected = ref.decode(latents / ref.config.scaling_factor).sample
    assert ours.shape == (2, 3, 64, 96) and rel_err(ours, expected) <= 1e-4


def test_an_overflowing_fp16_decode_is_redone_in_fp32(base_file):
    bundle = load_checkpoint(base_file[1], dtype=torch.float16)
    with torch.no_grad():
        weight = bundle.vae.decoder.conv_out.weight
        weight.mul_(30000.0 / weight.abs().max().item())  # finite weights, outputs beyond fp16's 65504
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        assert not torch.isfinite(bundle.vae.decode((latents / SDXL_LATENT_SCALE).half())).all()
    pixels = decode_pixels(PipelineContext(bundle), latents)
    assert pixels.dtype == torch.float32 and torch.isfinite(pixels).all()
    assert {p.dtype for p in bundle.vae.parameters()} == {torch.float16}  # back to fp16 afterwards
    with torch.inference_mode():
        expected = bundle.vae.float().decode(latents / SDXL_LATENT_SCALE)
    assert rel_err(pixels, expected) <= 1e-6


def test_openclip_conversion_keeps_the_projection_transposed_when_asked():
    p = torch.arange(6.0).reshape(2, 3)  # [width 2, projection 3], applied as x @ P
    kept = openclip_to_transformers({"text_projection": p, "logit_scale": torch.tensor(1.0)}, keep_projection=True)
    assert set(kept) == {"text_projection.weight"} and torch.equal(kept["text_projection.weight"], p.t())
    x = torch.randn(4, 2)
    assert torch.allclose(torch.nn.functional.linear(x, kept["text_projection.weight"]), x @ p)
    assert openclip_to_transformers({"text_projection": p}) == {}  # SD 2 does not use it
