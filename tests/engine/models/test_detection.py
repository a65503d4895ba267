"""Detection from keys and shapes alone, on fake state dicts (shapes only, no data)."""

import itertools

import pytest

from webui.engine.models.detection import FAMILY_RULES, Layout, detect_layout, detect_model_spec
from webui.errors import ModelLoadError, UnsupportedModelError

from .tiny_checkpoints import Recipe, make_checkpoint, shapes_of, unet_config, vae_config


def full_size_shapes(family: str, variant: str = "base") -> dict[str, tuple[int, ...]]:
    return shapes_of(make_checkpoint(Recipe(family, variant, full_size=True)))


@pytest.fixture(scope="module")
def sd15_shapes():
    return full_size_shapes("sd1")


@pytest.fixture(scope="module")
def sd2_shapes():
    return full_size_shapes("sd2")


def test_sd15_full_size(sd15_shapes):
    assert sum(k.startswith("model.diffusion_model.") for k in sd15_shapes) == 686
    assert sum(k.startswith("first_stage_model.") for k in sd15_shapes) == 248
    spec = detect_model_spec(sd15_shapes)
    assert (spec.family, spec.variant, spec.prediction) == ("sd1", "base", "eps")
    assert spec.unet == unet_config(Recipe("sd1", full_size=True))
    assert spec.vae == vae_config(Recipe("sd1", full_size=True))
    te = spec.text_encoder
    assert (te.layout, te.width, te.layers, te.heads, te.mlp_width, te.pad_token_id) == ("clip", 768, 12, 12, 3072, 49407)


def test_sd2_full_size(sd2_shapes):
    spec = detect_model_spec(sd2_shapes)
    assert (spec.family, spec.variant) == ("sd2", "base")
    assert spec.unet == unet_config(Recipe("sd2", full_size=True))
    assert spec.unet.use_linear_in_transformer and spec.unet.num_head_channels == 64
    te = spec.text_encoder
    assert (te.layout, te.width, te.layers, te.heads, te.pad_token_id, te.default_layer) == (
        "openclip", 1024, 24, 16, 0, "penultimate")


def _with_unet_inputs(shapes, channels):
    shapes = dict(shapes)
    key = "model.diffusion_model.input_blocks.0.0.weight"
    shapes[key] = (shapes[key][0], channels, 3, 3)
    return shapes


@pytest.mark.parametrize(("family", "channels", "variant"), [
    ("sd1", 9, "inpaint"), ("sd2", 9, "inpaint"), ("sd2", 5, "depth")])
def test_inpaint_and_depth_from_input_channels(family, channels, variant, sd15_shapes, sd2_shapes):
    shapes = _with_unet_inputs(sd15_shapes if family == "sd1" else sd2_shapes, channels)
    spec = detect_model_spec(shapes)
    assert (spec.family, spec.variant, spec.unet.in_channels) == (family, variant, channels)


@pytest.mark.parametrize("recipe", [Recipe("sd1"), Recipe("sd2"), Recipe("sd1", "inpaint"), Recipe("sd2", "depth")],
                         ids=lambda r: f"{r.family}-{r.variant}")
def test_reduced_size_models_infer_their_hyperparameters(recipe):
    spec = detect_model_spec(shapes_of(make_checkpoint(recipe)))
    assert (spec.family, spec.variant) == (recipe.family, recipe.variant)
    assert spec.unet == unet_config(recipe)
    assert spec.vae == vae_config(recipe)


def sdxl_shapes(refiner: bool, in_channels: int = 4) -> dict[str, tuple[int, ...]]:
    p = "model.diffusion_model."
    shapes = {p + "input_blocks.0.0.weight": (384 if refiner else 320, in_channels, 3, 3),
              p + "label_emb.0.0.weight": (1280, 2560 if refiner else 2816)}
    if refiner:
        shapes["conditioner.embedders.0.model.token_embedding.weight"] = (49408, 1280)
    else:
        shapes["conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"] = (49408, 768)
        shapes["conditioner.embedders.1.model.token_embedding.weight"] = (49408, 1280)
    return shapes


@pytest.mark.parametrize("refiner", [False, True], ids=["base", "refiner"])
def test_sdxl_layouts_are_told_apart_by_their_text_encoders(refiner):
    # Full detection of SDXL base and refiner is tested in test_sdxl.py.
    assert detect_layout(sdxl_shapes(refiner)) == Layout("sdxl_refiner" if refiner else "sdxl", 4)


def test_sdxl_inpainting_is_recognised_and_refused_clearly():
    with pytest.raises(UnsupportedModelError, match="SDXL inpaint is not supported yet"):
        detect_model_spec(sdxl_shapes(False, in_channels=9), "x.safetensors")


@pytest.mark.parametrize(("shapes", "message"), [
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320)}, "LoRA"),
    ({"encoder.conv_in.weight": (128, 3, 3, 3), "decoder.conv_out.weight": (3, 128, 3, 3)}, "VAE"),
    ({"first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3)}, "VAE"),
    ({"control_model.input_blocks.0.0.weight": (320, 4, 3, 3)}, "ControlNet"),
    ({"string_to_param.*": (2, 768)}, "embedding"),
    ({"emb_params": (2, 768)}, "embedding"),
    ({}, "no tensors"),
    ({"some.other.weight": (3, 3)}, "not a Stable Diffusion checkpoint"),
])
def test_other_files_are_named_for_what_they_are(shapes, message):
    with pytest.raises(ModelLoadError, match=message):
        detect_model_spec(shapes, "thing.safetensors")


def test_unknown_architecture_names_what_it_saw(sd15_shapes):
    with pytest.raises(ModelLoadError, match="unknown architecture.*7 input channels"):
        detect_model_spec(_with_unet_inputs(sd15_shapes, 7))


def test_damaged_layout_is_a_clear_error(sd15_shapes):
    shapes = {k: v for k, v in sd15_shapes.items() if "out.2.weight" not in k}
    with pytest.raises(ModelLoadError, match="incomplete or damaged"):
        detect_model_spec(shapes)


def test_no_two_rules_match_the_same_layout():
    texts = {r.text for r in FAMILY_RULES} | {"none"}
    channels = {r.unet_in_channels for r in FAMILY_RULES} | {0, 7}
    for text, ch in itertools.product(texts, channels):
        matching = [r for r in FAMILY_RULES if r.matches(Layout(text, ch))]
        assert len(matching) <= 1, (text, ch, matching)
    assert len({(r.family, r.variant) for r in FAMILY_RULES}) == len(FAMILY_RULES)
