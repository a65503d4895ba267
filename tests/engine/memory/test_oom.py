"""Out-of-memory recovery, by fault injection: the job finishes under a fallback or fails with an error
that says where and what to change; what the failed attempt held is released; the next job works."""

import importlib
import weakref

import pytest
import torch

from webui.engine.memory.attention import AttentionConfig
from webui.engine.memory.oom import OutOfMemory, is_out_of_memory
from webui.engine.memory.policy import MemoryPolicy
from webui.engine.pipelines import PipelineContext, generate
from webui.engine.request import GenerationRequest

REQUEST = GenerationRequest(prompt="a red circle", negative_prompt="", width=64, height=64, steps=2, seed=3,
                            sampler_name="Euler")


class Failing:
    """Wraps a function: raises out of memory on the calls `when(*args)` approves, `times` times at most;
    each failure first allocates a tensor (what a real attempt holds) and remembers a weak reference to it."""

    def __init__(self, function, times=1, when=lambda *args: True):
        self.function, self.times, self.when = function, times, when
        self.failures, self.held = 0, []

    def __call__(self, *args, **kwargs):
        if self.failures < self.times and self.when(*args):
            self.failures += 1
            activations = torch.empty(1 << 20)
            self.held.append(weakref.ref(activations))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return self.function(*args, **kwargs)


def backends(bundle):
    return {m.attention_config.backend for m in bundle.unet.modules() if hasattr(m, "attention_config")}


def test_unet_out_of_memory_retries_with_a_saver_that_saves(tiny_sd1, monkeypatch):
    # The plain reference attention holds every score matrix; slicing in 64 KiB chunks holds one at a time.
    request = GenerationRequest(**{**REQUEST.__dict__, "width": 256, "height": 256})
    policy = MemoryPolicy(attention=AttentionConfig("reference", budget_bytes=1 << 16))
    expected = generate(request, PipelineContext(tiny_sd1, memory=policy)).images[0]
    failing = Failing(tiny_sd1.unet.forward)
    monkeypatch.setattr(tiny_sd1.unet, "forward", failing)
    result = generate(request, PipelineContext(tiny_sd1, memory=policy))
    assert failing.failures == 1 and all(ref() is None for ref in failing.held)  # freed, without waiting for gc
    assert result.notices == ["Ran out of memory at sampling; finished with sliced attention. "
                              "Set them in Settings (Memory) to skip the failed attempt next time."]
    difference = torch.tensor(list(result.images[0].tobytes())) - torch.tensor(list(expected.tobytes()))
    assert difference.abs().max() <= 1  # sliced attention equals the reference to ~1e-6
    assert backends(tiny_sd1) == {"reference"}  # the fallback was for that job only


def test_a_saver_that_would_need_more_memory_is_not_tried(tiny_sd1, monkeypatch):
    # PyTorch's fused SDPA needs less memory than slicing: after running out with it, slicing cannot help.
    failing = Failing(tiny_sd1.unet.forward)
    monkeypatch.setattr(tiny_sd1.unet, "forward", failing)
    with pytest.raises(OutOfMemory, match="^out of memory at sampling"):
        generate(REQUEST, PipelineContext(tiny_sd1))
    assert failing.failures == 1


def test_when_every_fallback_fails_the_error_says_where_and_the_engine_keeps_working(tiny_sd1, monkeypatch):
    request = GenerationRequest(**{**REQUEST.__dict__, "width": 256, "height": 256})
    policy = MemoryPolicy(attention=AttentionConfig("reference", budget_bytes=1 << 16))
    failing = Failing(tiny_sd1.unet.forward, times=99)
    monkeypatch.setattr(tiny_sd1.unet, "forward", failing)
    with pytest.raises(OutOfMemory) as caught:
        generate(request, PipelineContext(tiny_sd1, memory=policy))
    assert str(caught.value) == ("out of memory at sampling (256x256, batch 1): lower the size or batch size, or set "
                                 "Offload to model or sequential in Settings")
    assert failing.failures == 2  # the reference, then sliced attention (no offloading on the CPU)
    assert all(ref() is None for ref in failing.held)
    assert backends(tiny_sd1) == {"reference"}
    failing.times = 0
    assert len(generate(REQUEST, PipelineContext(tiny_sd1)).images) == 1


def test_vae_decode_out_of_memory_retries_in_tiles(tiny_sd1, monkeypatch):
    request = GenerationRequest(**{**REQUEST.__dict__, "width": 128, "height": 128})
    policy = MemoryPolicy(vae_tile=8, vae_tile_overlap=2)
    tiled = MemoryPolicy(vae_tiling="on", vae_tile=8, vae_tile_overlap=2)
    expected = generate(request, PipelineContext(tiny_sd1, memory=tiled)).images[0]
    failing = Failing(tiny_sd1.vae.decode, times=99, when=lambda z: z.shape[-1] > 8)  # only whole images fail
    monkeypatch.setattr(tiny_sd1.vae, "decode", failing)
    result = generate(request, PipelineContext(tiny_sd1, memory=policy))
    assert failing.failures == 1 and result.notices == []  # handled inside the decode step
    assert result.images[0].tobytes() == expected.tobytes()  # decoded in the policy's tiles


def test_vae_decode_that_never_fits_names_the_size(tiny_sd1, monkeypatch):
    monkeypatch.setattr(tiny_sd1.vae, "decode", Failing(tiny_sd1.vae.decode, times=99))
    request = GenerationRequest(**{**REQUEST.__dict__, "batch_size": 2})
    with pytest.raises(OutOfMemory, match=r"^out of memory at VAE decode \(64x64, batch 2\): enable tiled VAE"):
        generate(request, PipelineContext(tiny_sd1))


def test_hires_upscale_out_of_memory(tiny_sd1, monkeypatch):
    txt2img = importlib.import_module("webui.engine.pipelines.txt2img")
    failing = Failing(txt2img.upscale_latents)
    monkeypatch.setattr(txt2img, "upscale_latents", failing)
    request = GenerationRequest(**{**REQUEST.__dict__, "enable_hr": True, "hr_scale": 1.5,
                                   "hr_upscaler": "Latent"})
    result = generate(request, PipelineContext(tiny_sd1))
    assert failing.failures == 1 and result.images[0].size == (96, 96)
    assert result.notices[0].startswith("Ran out of memory at hires upscale; finished with tiled VAE.")


def test_out_of_memory_is_recognised_from_each_allocator():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "
                                         "memory: you tried to allocate 107374182400 bytes"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 8.00 GB)"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))
