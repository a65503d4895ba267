"""A tiny random SD 1 model in the real layout, loaded once for the memory tests."""

import pytest
from safetensors.torch import save_file

from webui.engine.models.loading import load_checkpoint

from ..models.tiny_checkpoints import Recipe, make_checkpoint


@pytest.fixture(scope="session")
def tiny_sd1_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("memory-models") / "tiny-sd1.safetensors"
    save_file(make_checkpoint(Recipe("sd1"), seed=5), str(path))
    return path


@pytest.fixture
def tiny_sd1(tiny_sd1_file):
    """A fresh bundle per test: the tests change its placement and attention."""
    return load_checkpoint(tiny_sd1_file)
