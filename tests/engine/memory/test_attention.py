"""Attention backends against the plain fp32 reference, and the UNet/VAE with a backend set."""

import pytest
import torch

from webui.engine.memory.attention import (
    AttentionConfig, attention, auto_slice_size, reference_attention, run_attention, set_attention,
)
from webui.engine.models.unet import CrossAttention
from webui.engine.models.vae import AttnBlock

from ..models.reference import rel_err
from ..models.test_unet import our_unet
from ..models.test_vae import our_vae
from ..models.tiny_checkpoints import TEXT_WIDTH, Recipe, make_checkpoint


def qkv(n, m=None, d=8, b=2, heads=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    m = n if m is None else m
    return (torch.randn(b, heads, n, d, generator=gen), torch.randn(b, heads, m, d, generator=gen),
            torch.randn(b, heads, m, d, generator=gen))


@pytest.mark.parametrize("backend,slice_size", [
    ("sdpa", None), ("sliced", None), ("sliced", 1), ("sliced", 7), ("sliced", 16), ("sliced", 1000),
])
@pytest.mark.parametrize("n,m", [(64, 64), (37, 37), (33, 77)], ids=["even", "odd", "cross"])
def test_backend_equals_reference(backend, slice_size, n, m):
    q, k, v = qkv(n, m)
    out = attention(q, k, v, backend, slice_size)
    assert out.shape == q.shape[:-1] + (v.shape[-1],)
    assert rel_err(out, reference_attention(q, k, v)) <= 1e-5


def test_auto_slice_size_keeps_the_score_matrix_under_the_budget():
    q, k, v = qkv(100, 50)  # score row: 2 batches * 3 heads * 50 keys * 4 bytes = 1200 bytes
    assert auto_slice_size(q, k, budget_bytes=12_000) == 10
    assert auto_slice_size(q, k, budget_bytes=1) == 1
    assert auto_slice_size(q, k) == 100  # the default budget (256 MB) holds everything
    small_budget = AttentionConfig("sliced", budget_bytes=12_000)  # auto: 10 rows per chunk
    assert rel_err(run_attention(small_budget, q, k, v), reference_attention(q, k, v)) <= 1e-5


def test_reference_runs_in_fp32_and_returns_the_input_dtype():
    q, k, v = (t.to(torch.bfloat16) for t in qkv(20))
    out = attention(q, k, v, "reference")
    assert out.dtype == torch.bfloat16
    assert rel_err(out, reference_attention(q.float(), k.float(), v.float())) <= 1e-2


def test_config_is_validated():
    with pytest.raises(ValueError):
        AttentionConfig("flash")
    with pytest.raises(ValueError):
        AttentionConfig("sliced", slice_size=0)
    with pytest.raises(ValueError):
        attention(*qkv(4), backend="nope")


def test_default_is_sdpa_and_set_attention_walks_the_tree():
    recipe = Recipe("sd1")
    checkpoint = make_checkpoint(recipe, seed=3)
    unet, vae = our_unet(checkpoint, recipe), our_vae(checkpoint, recipe)
    assert all(m.attention_config == AttentionConfig() for m in unet.modules() if isinstance(m, CrossAttention))
    sliced = AttentionConfig("sliced", slice_size=5)
    n_unet = set_attention(unet, sliced)
    assert n_unet == sum(isinstance(m, CrossAttention) for m in unet.modules()) > 0
    assert set_attention(vae, sliced) == sum(isinstance(m, AttnBlock) for m in vae.modules()) > 0
    assert all(m.attention_config is sliced for m in unet.modules() if isinstance(m, CrossAttention))
    # per instance: another model is untouched
    other = our_unet(checkpoint, recipe)
    assert all(m.attention_config.backend == "sdpa" for m in other.modules() if isinstance(m, CrossAttention))


@pytest.mark.parametrize("config", [AttentionConfig("sliced", slice_size=7), AttentionConfig("sliced"),
                                    AttentionConfig("reference")], ids=["sliced7", "sliced-auto", "reference"])
def test_unet_and_vae_with_a_backend_equal_sdpa(config):
    recipe = Recipe("sd1")
    checkpoint = make_checkpoint(recipe, seed=3)
    unet, vae = our_unet(checkpoint, recipe), our_vae(checkpoint, recipe)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 13, 21, generator=gen)  # odd sizes: 273 tokens, not a multiple of 7
    t = torch.tensor([500.0])
    context = torch.randn(1, 77, TEXT_WIDTH, generator=gen)
    with torch.inference_mode():
        expected, expected_pixels = unet(x, t, context), vae.decode(x)
        set_attention(unet, config)
        set_attention(vae, config)
        out, pixels = unet(x, t, context), vae.decode(x)
    assert rel_err(out, expected) <= 1e-5
    assert rel_err(pixels, expected_pixels) <= 1e-5
