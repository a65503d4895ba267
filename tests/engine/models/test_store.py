"""The model store: reuse, freeing on switch, and a failed switch leaving the previous model usable."""

import gc
import weakref

import pytest
import torch
from safetensors.torch import save_file

from webui.engine.models.store import ModelStore
from webui.errors import ModelLoadError

from .tiny_checkpoints import Recipe, make_checkpoint


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("store")
    a, b = folder / "a.safetensors", folder / "b.safetensors"
    save_file(make_checkpoint(Recipe("sd1"), seed=1), str(a))
    save_file(make_checkpoint(Recipe("sd2"), seed=2), str(b), metadata={"modelspec.prediction_type": "v"})
    return a, b


def test_same_request_reuses_the_bundle(files):
    store = ModelStore()
    assert store.load(files[0]) is store.load(files[0])


def test_switching_frees_the_previous_model(files):
    store = ModelStore()
    first = weakref.ref(store.load(files[0]).unet)
    second = store.load(files[1])
    gc.collect()
    assert first() is None
    assert store.current is second and second.spec.family == "sd2" and second.spec.prediction == "v"


def test_bad_file_leaves_the_loaded_model_in_place(files, tmp_path):
    store = ModelStore()
    bundle = store.load(files[0])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelLoadError):
        store.load(bad)
    assert store.current is bundle


def test_failure_during_loading_restores_the_previous_model(files, tmp_path):
    store = ModelStore()
    store.load(files[0])
    sd = make_checkpoint(Recipe("sd1"), seed=3)
    sd["model.diffusion_model.middle_block.0.in_layers.2.weight"] = torch.zeros(64, 64, 1, 1)  # fails late
    bad = tmp_path / "late.safetensors"
    save_file(sd, str(bad))
    with pytest.raises(ModelLoadError, match="unexpected shapes"):
        store.load(bad)
    assert store.current is not None and store.current.path == files[0].resolve()
    x = torch.randn(1, 4, 8, 8)
    with torch.inference_mode():
        assert store.current.unet(x, torch.tensor([10.0]), torch.randn(1, 77, 64)).shape == x.shape
