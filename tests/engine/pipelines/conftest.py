"""Tiny random models in the real single-file layout, loaded through the real loader."""

import pytest
import torch
from safetensors.torch import save_file

from webui.engine.models.loading import load_checkpoint
from webui.engine.pipelines import PipelineContext

from ..models.tiny_checkpoints import Recipe, make_checkpoint


@pytest.fixture(scope="session")
def model_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline-models")
    files = {}
    for recipe in (Recipe("sd1"), Recipe("sd1", "inpaint"), Recipe("sd2")):
        path = folder / f"tiny-{recipe.family}-{recipe.variant}.safetensors"
        save_file(make_checkpoint(recipe, seed=42), str(path))
        files[(recipe.family, recipe.variant)] = path
    return files


@pytest.fixture(scope="session")
def sd1(model_files):
    return load_checkpoint(model_files[("sd1", "base")])


@pytest.fixture(scope="session")
def sd1_inpaint(model_files):
    return load_checkpoint(model_files[("sd1", "inpaint")])


@pytest.fixture(scope="session")
def sd2_v(model_files):
    return load_checkpoint(model_files[("sd2", "base")], prediction="v")


@pytest.fixture
def ctx(sd1):
    return PipelineContext(sd1)


def pixels(image) -> torch.Tensor:
    import numpy as np
    return torch.from_numpy(np.asarray(image, dtype=np.int16))
