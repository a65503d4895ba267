"""The LoRA extension end to end: tags in the prompt, loaded through the extension manager like any
extension, applied for the job only, written into the infotext and read back from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from extensions.builtin.lora import parse_tags  # the extension's own module, imported as a namespace package
from webui.engine.pipelines import PipelineContext, generate
from webui.engine.request import GenerationRequest
from webui.outputs import parse_infotext

from ...helpers import load_builtin_extensions
from .conftest import all_params



@pytest.mark.parametrize("prompt, text, networks", [
    ("a cat <lora:style:0.8>", "a cat ", [{"name": "style", "te": 0.8, "unet": 0.8}]),
    ("<lora:style>x", "x", [{"name": "style", "te": 1.0, "unet": 1.0}]),
    ("<lora:a:0.5:1.2> <lora:b:unet=0.3>", " ", [{"name": "a", "te": 0.5, "unet": 1.2},
                                                 {"name": "b", "te": 1.0, "unet": 0.3}]),
    ("<lora:style:lots> and <lora::1>", "<lora:style:lots> and <lora::1>", []),  # malformed: left as text
])
def test_tags(prompt, text, networks):
    assert parse_tags(prompt) == (text, networks)


@pytest.fixture
def manager(tmp_path, sd1):
    models = tmp_path / "models"
    (models / "loras").mkdir(parents=True)
    unet = sd1.unet
    attn = unet.input_blocks[1][1].transformer_blocks[0].attn2.to_k  # cross-attention key: sees the text
    gen = torch.Generator().manual_seed(7)
    save_file({
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight":
            torch.randn(4, attn.in_features, generator=gen),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight":
            torch.randn(attn.out_features, 4, generator=gen),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.alpha": torch.tensor(4.0),
    }, str(models / "loras" / "style.safetensors"))
    result = load_builtin_extensions(models, tmp_path / "data")
    assert {r.name: r.status for r in result.records}["lora"] == "loaded"
    return result


def run(sd1, manager, prompt):
    ctx = PipelineContext(sd1, hooks=manager.hooks_for_job())
    return generate(GenerationRequest(prompt=prompt, width=64, height=64, steps=2, seed=3), ctx)


def test_a_lora_tag_changes_the_image_for_that_job_only(sd1, manager):
    before = all_params(sd1)
    plain = run(sd1, manager, "a cat")
    styled = run(sd1, manager, "a cat <lora:style:1>")
    zero = run(sd1, manager, "a cat <lora:style:0>")
    pixels = [torch.from_numpy(np.asarray(r.images[0], dtype=np.float32)) for r in (plain, styled, zero)]
    assert (pixels[0] - pixels[1]).abs().mean() > 1.0  # the LoRA changed the image
    assert torch.equal(pixels[0], pixels[2])  # weight 0 is a no-op
    after = all_params(sd1)
    assert all(torch.equal(after[k], before[k]) for k in before)  # the base weights are restored exactly

    infotext = parse_infotext(styled.infotexts[0])
    assert infotext.prompt == "a cat <lora:style:1>"  # the tag stays, so reading the image back restores it
    assert infotext.params["Lora hashes"].startswith("style: ") and len(infotext.params["Lora hashes"]) == 19
    assert not styled.notices


def test_an_unknown_lora_is_left_out_with_a_notice(sd1, manager):
    result = run(sd1, manager, "a cat <lora:nothing:1>")
    assert len(result.images) == 1
    assert any("no LoRA named 'nothing'" in n for n in result.notices)
