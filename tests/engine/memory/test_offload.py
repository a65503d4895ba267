"""Offload modes: the same images as without offloading, and only the network in use "on the device".

This machine has no GPU, so the compute device is the CPU and the moves change nothing physically;
what is checked is the placement's bookkeeping (which network is resident when each one runs, that
every layer visits in sequential mode) and that the hooks leave the results bit-identical.
"""

import pytest
import torch

from webui.engine.memory.offload import Placement
from webui.engine.pipelines import PipelineContext, generate
from webui.engine.request import GenerationRequest

REQUEST = GenerationRequest(prompt="a red circle", negative_prompt="blue", width=64, height=64, steps=3, seed=3,
                            sampler_name="Euler")


def networks(bundle):
    return {"unet": bundle.unet, "text_encoder": bundle.text_encoder, "vae": bundle.vae}


def resident_when_called(bundle, placement):
    """Records, at every layer call (after the placement's own hook), which networks are on the device."""
    seen = set()
    for name, module in networks(bundle).items():
        for layer in module.modules():
            if any(True for _ in layer.parameters(recurse=False)):
                layer.register_forward_pre_hook(lambda m, a, name=name: seen.add((name, tuple(placement.on_device()))))
    return seen


def image_tensor(result):
    return torch.stack([torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8) for im in result.images])


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offloading_gives_identical_images(tiny_sd1, mode):
    plain = generate(REQUEST, PipelineContext(tiny_sd1))
    placement = Placement(networks(tiny_sd1), torch.device("cpu"))
    tiny_sd1.placement = placement
    placement.set_mode(mode)
    seen = resident_when_called(tiny_sd1, placement)
    offloaded = generate(REQUEST, PipelineContext(tiny_sd1))
    assert torch.equal(image_tensor(offloaded), image_tensor(plain))
    assert {name for name, _ in seen} == {"text_encoder", "unet", "vae"}
    if mode == "model":  # only the network running is resident; one move per switch of network
        assert all(resident == (name,) for name, resident in seen)
        assert placement.moves == 3  # text encoder -> UNet -> VAE
    else:  # every weighted layer visits, each time it runs
        layers = sum(1 for n in networks(tiny_sd1).values() for m in n.modules()
                     if any(True for _ in m.parameters(recurse=False)))
        assert placement.moves >= layers


def test_switching_back_to_none_removes_the_hooks(tiny_sd1):
    placement = Placement(networks(tiny_sd1), torch.device("cpu"))
    placement.set_mode("sequential")
    placement.set_mode("none")
    before = placement.moves
    generate(REQUEST, PipelineContext(tiny_sd1))
    assert placement.moves == before and placement.on_device() == ["unet", "text_encoder", "vae"]
    with pytest.raises(ValueError, match="offload mode 'auto'"):
        placement.set_mode("auto")
