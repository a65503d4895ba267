"""Prompts through the pipeline's encoding step: literal text unchanged, emphasis, schedules, AND and
textual-inversion embeddings, on a tiny SD 1 model."""

from __future__ import annotations

import torch

from extensions.builtin.prompt_weighting.parser import parse_prompt
from webui.engine.models.prompt_tokens import Embedding
from webui.engine.pipelines import PipelineContext, generate
from webui.engine.pipelines.hooks import PipelineHooks
from webui.engine.pipelines.steps import encode_prompts
from webui.engine.request import GenerationRequest


class A1111Syntax(PipelineHooks):
    def parse_prompt(self, text, steps, is_negative):
        return parse_prompt(text, steps, allow_and=not is_negative)


def encoded(ctx, prompt, negative="", steps=4):
    return encode_prompts(ctx, GenerationRequest(prompt=prompt, negative_prompt=negative, steps=steps))


def test_a_literal_prompt_encodes_as_the_text_encoder_does(ctx):
    cond, uncond = encoded(ctx, "a photo of a cat", "blurry")
    te = ctx.bundle.text_encoder
    assert torch.equal(cond.first.context, te.encode(["a photo of a cat"]))
    assert torch.equal(uncond.first.context, te.encode(["blurry"]))


def test_emphasis_raises_the_weighted_tokens_against_the_rest(sd1):
    plain, _ = encoded(PipelineContext(sd1, hooks=A1111Syntax()), "a red cat")
    weighted, _ = encoded(PipelineContext(sd1, hooks=A1111Syntax()), "a red (cat:1.5)")
    a, b = plain.first.context[0], weighted.first.context[0]  # (77, width); position 3 is "cat"
    assert not torch.equal(a, b)
    assert torch.allclose(a.mean(), b.mean(), atol=1e-5)  # A1111 restores the mean
    ratio = b / a
    assert ratio[3].mean() / ratio[1].mean() > 1.45  # cat scaled by 1.5 relative to "a"
    assert torch.allclose(ratio[1], ratio[2], atol=1e-4)  # the unweighted tokens share one factor


def test_prompt_editing_switches_the_conditioning_at_its_step(sd1):
    ctx = PipelineContext(sd1, hooks=A1111Syntax())
    cond, _ = encoded(ctx, "a [cat:dog:2] in a field", steps=4)
    [(weight, schedule)] = cond.parts
    assert weight == 1.0 and [end for end, _ in schedule] == [2, 4]
    te = sd1.text_encoder
    assert torch.equal(schedule[0][1].context, te.encode(["a cat in a field"]))
    assert torch.equal(schedule[1][1].context, te.encode(["a dog in a field"]))

    contexts = []  # what the network sees at each call: cond rows first

    def recording(unet):
        def run(x, t, context, **kwargs):
            contexts.append(context[0].clone())
            return unet(x, t, context, **kwargs)
        return run

    class Recording(A1111Syntax):
        def wrap_model(self, model, request, bundle, sampling):
            return recording(model)

    request = GenerationRequest(prompt="a [cat:dog:2] in a field", steps=4, width=64, height=64, sampler_name="Euler")
    generate(request, PipelineContext(sd1, hooks=Recording()))
    cat, dog = (e[1].context[0].to(contexts[0].dtype) for e in schedule)
    assert [torch.equal(c, cat) for c in contexts] == [True, True, True, False]  # steps 0, 1, 2 then 3
    assert torch.equal(contexts[3], dog)


def test_and_parts_each_get_their_weight(sd1):
    cond, uncond = encoded(PipelineContext(sd1, hooks=A1111Syntax()), "a cat AND a dog :0.5", "AND x")
    assert [w for w, _ in cond.parts] == [1.0, 0.5]
    assert len(uncond.parts) == 1 and uncond.parts[0][0] == 1.0  # negative prompts never split at AND


def test_an_embedding_name_is_replaced_by_its_vectors(sd1):
    te = sd1.text_encoder
    cat_id = te.tokenize("cat")[0]
    token_embedding = te.model.get_input_embeddings().weight
    vectors = token_embedding[cat_id : cat_id + 1].detach().float().clone()
    ctx = PipelineContext(sd1, embeddings=(Embedding("mystyle", {token_embedding.shape[1]: vectors}),))
    with_embedding, _ = encoded(ctx, "a mystyle")
    assert len(te.tokenize("mystyle")) > 1  # the name is several tokens; the embedding one vector
    assert torch.allclose(with_embedding.first.context, te.encode(["a cat"]), atol=1e-6)
    without, _ = encoded(PipelineContext(sd1), "a mystyle")
    assert not torch.allclose(without.first.context, with_embedding.first.context)
