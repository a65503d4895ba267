"""LoRA layer names -> our module paths, checked against diffusers' own LDM -> diffusers UNet conversion."""

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

from extensions.builtin.lora.keymap import IGNORED, LayerTable, split_key
from webui.engine.models.unet import UNetModel
from webui.engine.patching import model_roots

from ....engine.models.reference import reference_sdxl_unet, reference_unet
from ....engine.models.tiny_checkpoints import (
    Recipe, checkpoint_shapes, ldm_original_config, make_checkpoint, sgm_original_config, unet_config, vae_config,
)
from .conftest import RECIPES, SEED


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_every_diffusers_unet_layer_maps_to_the_layer_holding_the_same_weights(bundles, family):
    """diffusers converts the same checkpoint; each of its layers must map to ours with equal tensors."""
    bundle, recipe = bundles(family), RECIPES[family]
    checkpoint = make_checkpoint(recipe, seed=SEED)
    reference = (reference_sdxl_unet if family == "sdxl" else reference_unet)(checkpoint, recipe)
    table = LayerTable(model_roots(bundle))
    ours = dict(bundle.unet.named_parameters())
    hit = set()
    for key, value in reference.state_dict().items():
        if not key.endswith(".weight"):
            continue
        layer = key.removesuffix(".weight")
        for form in (f"unet.{layer}", "lora_unet_" + layer.replace(".", "_")):
            path = table.find(form)
            assert path is not None and path.startswith("unet."), f"{form} found no layer"
            weight = ours[path.removeprefix("unet.") + ".weight"]
            assert torch.equal(weight, value.reshape(weight.shape)), f"{key} mapped to {path}, which holds other weights"
        hit.add(path.removeprefix("unet."))
    weighted = {name.removesuffix(".weight") for name in ours if name.endswith(".weight")}
    assert hit == weighted  # and every layer of ours is reachable by a diffusers name


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_full_size_diffusers_layers_all_map_to_layers_of_the_same_size(family):
    """The real sizes (SDXL: transformer depth 10, no attention at the top level), on the meta device."""
    recipe = Recipe(family, full_size=True)
    cfg = unet_config(recipe)
    if family == "sdxl":
        original = sgm_original_config(cfg, vae_config(recipe))
        shapes = checkpoint_shapes(recipe)
    else:
        original = ldm_original_config(cfg, vae_config(recipe))
        shapes = {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}
    config = create_unet_diffusers_config_from_ldm(original, {k: torch.empty(s, device="meta") for k, s in shapes.items()})
    if family == "sdxl":
        config.update(class_embed_type=None, addition_embed_type="text_time", addition_time_embed_dim=256)
    with torch.device("meta"):
        reference, ours = UNet2DConditionModel(**config), UNetModel(cfg)
    table = LayerTable({"unet": ours})
    params = dict(ours.named_parameters())
    for key, value in reference.named_parameters():
        if key.endswith(".weight"):
            path = table.find("lora_unet_" + key.removesuffix(".weight").replace(".", "_"))
            assert path is not None, key
            assert params[path.removeprefix("unet.") + ".weight"].numel() == value.numel(), (key, path)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_original_names_map_to_themselves(bundles, family):
    bundle = bundles(family)
    table = LayerTable(model_roots(bundle))
    for name, p in bundle.unet.named_parameters():
        if name.endswith(".weight"):
            layer = name.removesuffix(".weight")
            assert table.find("lora_unet_" + layer.replace(".", "_")) == f"unet.{layer}"
            assert table.find(f"diffusion_model.{layer}") == f"unet.{layer}"


def test_text_encoder_names(sd1, sd2, sdxl):
    te1 = LayerTable(model_roots(sd1))
    assert te1.find("lora_te_text_model_encoder_layers_2_self_attn_q_proj") == \
        "text_encoder.model." + _clip_name(sd1.text_encoder.model, "encoder.layers.2.self_attn.q_proj")
    assert te1.find("text_encoder.text_model.encoder.layers.0.mlp.fc2") == \
        "text_encoder.model." + _clip_name(sd1.text_encoder.model, "encoder.layers.0.mlp.fc2")
    assert te1.find("lora_te_text_model_encoder_layers_3_mlp_fc1") is None  # SD 1 tiny has 3 layers
    assert te1.find("lora_te1_text_model_encoder_layers_0_mlp_fc1") is None  # SDXL's names

    # SD 2 builds its text encoder without the (never used) last block: its keys are ignored, not missing.
    te2 = LayerTable(model_roots(sd2))
    assert te2.find("lora_te_text_model_encoder_layers_2_mlp_fc1") == IGNORED
    assert te2.find("lora_te_text_model_encoder_layers_1_mlp_fc1").endswith("encoder.layers.1.mlp.fc1")
    assert te2.find("lora_te_text_model_encoder_layers_9_mlp_fc1") is None

    xl = LayerTable(model_roots(sdxl))
    clip_l, bigg = sdxl.text_encoder.encoders
    assert xl.find("lora_te1_text_model_encoder_layers_1_self_attn_k_proj") == \
        "text_encoder.encoders.0.model." + _clip_name(clip_l.model, "encoder.layers.1.self_attn.k_proj")
    assert xl.find("lora_te2_text_model_encoder_layers_2_self_attn_out_proj") == \
        "text_encoder.encoders.1.model." + _clip_name(bigg.model, "encoder.layers.2.self_attn.out_proj")
    assert xl.find("text_encoder_2.text_model.encoder.layers.0.mlp.fc1").startswith("text_encoder.encoders.1.")
    assert xl.find("text_encoder.text_model.encoder.layers.0.mlp.fc1").startswith("text_encoder.encoders.0.")
    # SDXL uses CLIP-L's penultimate block: its last one is not built.
    assert xl.find("lora_te1_text_model_encoder_layers_2_mlp_fc1") == IGNORED


@pytest.mark.parametrize("key, expected", [
    ("lora_unet_down_blocks_0_attentions_0_proj_in", ("unet", "down_blocks_0_attentions_0_proj_in")),
    ("unet.mid_block.attentions.0.proj_out", ("unet", "mid_block_attentions_0_proj_out")),
    ("base_model.model.unet.conv_in", ("unet", "conv_in")),
    ("lora_te2_text_model_encoder_layers_0_mlp_fc1", ("te2", "text_model_encoder_layers_0_mlp_fc1")),
    ("text_encoder_2.text_model.final_layer_norm", ("te2", "text_model_final_layer_norm")),
    ("vae.decoder.conv_in", None),
])
def test_split_key(key, expected):
    assert split_key(key) == expected


def _clip_name(model, name):
    """The installed transformers' module name (with `text_model.` when it has that level)."""
    return ("text_model." if hasattr(model, "text_model") else "") + name
