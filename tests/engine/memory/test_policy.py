"""The memory policy: validation, per-component dtypes, fallbacks by stage, choosing an offload mode."""

import pytest
import torch

from webui.engine.memory.attention import AttentionConfig
from webui.engine.memory.devices import ComponentDtypes, choose_dtypes
from webui.engine.memory.policy import MemoryPolicy, apply_policy, policy_from_settings

CUDA = torch.device("cuda")  # a device name only: nothing here runs on it


def names(steps):
    return [name for name, _ in steps]


def test_fallbacks_follow_the_stage_and_keep_earlier_savers():
    gpu = MemoryPolicy(device=CUDA)
    assert names(gpu.fallbacks("VAE decode")) == ["tiled VAE", "sliced attention", "model offload",
                                                   "sequential offload"]
    assert names(gpu.fallbacks("sampling")) == ["sliced attention", "model offload", "sequential offload"]
    assert names(gpu.fallbacks("text encoding")) == ["model offload", "sequential offload"]
    last = gpu.fallbacks("VAE decode")[-1][1]
    assert (last.vae_tiling, last.attention.backend, last.offload) == ("on", "sliced", "sequential")
    # What is already on is not offered again; "off" means never tile.
    assert names(MemoryPolicy(device=CUDA, offload="model", vae_tiling="off",
                              attention=AttentionConfig("sliced")).fallbacks("VAE decode")) == ["sequential offload"]
    # On the CPU offloading moves nothing, so it is never a fallback.
    assert names(MemoryPolicy().fallbacks("sampling")) == ["sliced attention"]
    assert MemoryPolicy(attention=AttentionConfig("sliced")).fallbacks("sampling") == []


def test_fallbacks_keep_only_the_savers_that_help():
    def no_slicing(before, after):
        return after.attention.backend != "sliced"

    steps = MemoryPolicy(device=CUDA).fallbacks("sampling", no_slicing)
    assert names(steps) == ["model offload", "sequential offload"]
    assert all(policy.attention.backend == "sdpa" for _, policy in steps)  # the skipped saver is not carried on


def test_policy_from_settings_and_validation():
    policy = policy_from_settings(torch.device("cpu"), ComponentDtypes(), attention="sliced", attention_slice_size=128,
                                  offload="model", vae_tiling="on", vae_tile_size=256)
    assert policy.attention == AttentionConfig("sliced", 128)
    assert (policy.vae_tile, policy.vae_tile_overlap, policy.offload, policy.vae_tiling) == (32, 8, "model", "on")
    assert "attention sliced (128)" in policy.describe()
    for bad, match in (({"offload": "gpu"}, "offload 'gpu'"), ({"vae_tiling": "yes"}, "vae_tiling 'yes'"),
                       ({"vae_tile": 4}, "vae_tile 4")):
        with pytest.raises(ValueError, match=match):
            MemoryPolicy(**bad)
    with pytest.raises(ValueError, match="attention 'flash'"):
        policy_from_settings(torch.device("cpu"), ComponentDtypes(), attention="flash")


def test_each_component_has_its_own_dtype():
    cpu = torch.device("cpu")
    assert choose_dtypes(cpu, "fp32", vae="bf16") == ComponentDtypes(torch.float32, torch.float32, torch.bfloat16)
    assert choose_dtypes(CUDA) == ComponentDtypes.all(torch.float16)
    assert choose_dtypes(CUDA, vae="fp32").vae == torch.float32


def test_a_model_loads_with_per_component_dtypes(tiny_sd1_file):
    from webui.engine.models.loading import load_checkpoint

    bundle = load_checkpoint(tiny_sd1_file, dtype=ComponentDtypes(torch.bfloat16, torch.float32, torch.float16))
    assert (bundle.unet.dtype, bundle.text_encoder.dtype, bundle.vae.dtype) == (torch.bfloat16, torch.float32,
                                                                               torch.float16)
    assert bundle.dtype == torch.bfloat16


def test_apply_policy_sets_attention_and_leaves_cpu_models_in_place(tiny_sd1):
    apply_policy(tiny_sd1, MemoryPolicy(attention=AttentionConfig("sliced", 7), offload="sequential"))
    backends = {m.attention_config for m in [*tiny_sd1.unet.modules(), *tiny_sd1.vae.modules()]
                if hasattr(m, "attention_config")}
    assert backends == {AttentionConfig("sliced", 7)}
    assert tiny_sd1.placement.mode == "none" and tiny_sd1.placement.moves == 0
