"""Tiny random SD 1.x / 2.x / SDXL checkpoints in the real layouts, loaded through the real loader."""

import pytest
import torch
from safetensors.torch import save_file

from webui.engine.models.loading import load_checkpoint

from ....engine.models.tiny_checkpoints import Recipe, make_checkpoint

SEED = 7
RECIPES = {"sd1": Recipe("sd1"), "sd2": Recipe("sd2"), "sdxl": Recipe("sdxl"), "sd1_inpaint": Recipe("sd1", "inpaint")}


@pytest.fixture(scope="session")
def lora_model_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora-models")
    files = {}
    for name, recipe in RECIPES.items():
        files[name] = folder / f"tiny-{name}.safetensors"
        save_file(make_checkpoint(recipe, seed=SEED), str(files[name]))
    return files


@pytest.fixture(scope="session")
def bundles(lora_model_files):
    loaded = {}

    def get(name):
        if name not in loaded:
            loaded[name] = load_checkpoint(lora_model_files[name])
        return loaded[name]

    return get


@pytest.fixture(scope="session")
def sd1(bundles):
    return bundles("sd1")


@pytest.fixture(scope="session")
def sd2(bundles):
    return bundles("sd2")


@pytest.fixture(scope="session")
def sdxl(bundles):
    return bundles("sdxl")


def all_params(bundle) -> dict[str, torch.Tensor]:
    """Every parameter of the UNet and text encoder by its patch target name, cloned."""
    out = {}
    for root in ("unet", "text_encoder"):
        for name, p in getattr(bundle, root).named_parameters():
            out[f"{root}.{name}"] = p.detach().clone()
    return out
