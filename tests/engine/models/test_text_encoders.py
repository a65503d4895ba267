"""Text encoders: tiny random CLIP / OpenCLIP weights in the original file layouts, checked against
diffusers' own single-file conversion into a `transformers` CLIPTextModel (eager attention)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel

from webui.engine.models.prompt_tokens import build_chunks
from webui.engine.models.specs import TextEncoderConfig
from webui.engine.models.text_encoders import (
    hf_clip_to_transformers,
    load_clip_tokenizer,
    openclip_to_transformers,
    text_encoder_config_from_shapes,
    text_encoder_from_state_dict,
)

from webui.engine.prompts import WeightedText

from .reference import reference_text_encoder
from .tiny_checkpoints import clip_text_state_dict, openclip_text_state_dict

BOS, EOS, VOCAB, POS = 49406, 49407, 49408, 77
SD1_PREFIX, SD2_PREFIX = "cond_stage_model.transformer.", "cond_stage_model.model."
SD1_W, SD1_LAYERS = 64, 3
SD2_W, SD2_LAYERS = 128, 4
PROMPTS = ["a photo of a cat", "an astronaut riding a horse on the moon, highly detailed, 8k", ""]


def _sd1_file(width: int, layers: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """HF CLIP naming under `cond_stage_model.transformer.text_model.`, as SD 1 files store it."""
    sd = {SD1_PREFIX + k: v for k, v in clip_text_state_dict(width, layers, seed).items()}
    sd["model.diffusion_model.out.2.bias"] = torch.zeros(4)  # not ours: the loader filters by prefix
    return sd


def _sd2_file(width: int, layers: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """OpenCLIP naming under `cond_stage_model.model.`, as SD 2 files store it."""
    return {SD2_PREFIX + k: v for k, v in openclip_text_state_dict(width, layers, seed).items()}


def _shapes(sd: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def _strip(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """What the loader passes: the text-encoder tensors with `cfg.prefix` removed."""
    return {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def sd1():
    file = _sd1_file(SD1_W, SD1_LAYERS)
    cfg = text_encoder_config_from_shapes("clip", SD1_PREFIX, _shapes(file))
    enc = text_encoder_from_state_dict(cfg, _strip(file, SD1_PREFIX), torch.float32, "cpu")
    return enc, reference_text_encoder(file, SD1_W, SD1_LAYERS, "quick_gelu", openclip=False)


@pytest.fixture(scope="module")
def sd2():
    file = _sd2_file(SD2_W, SD2_LAYERS)
    cfg = text_encoder_config_from_shapes("openclip", SD2_PREFIX, _shapes(file))
    enc = text_encoder_from_state_dict(cfg, _strip(file, SD2_PREFIX), torch.float32, "cpu")
    # diffusers' SD 2 text encoder: one layer fewer, exact gelu; its last_hidden_state conditions.
    return enc, reference_text_encoder(file, SD2_W, SD2_LAYERS - 1, "gelu", openclip=True)


def _prompt_ids(enc) -> torch.Tensor:
    return torch.tensor([enc.tokenize_chunks(p)[0] for p in PROMPTS])


# --- numerics against diffusers -----------------------------------------------------------------


def test_sd1_last_layer_matches_diffusers(sd1):
    enc, ref = sd1
    ids = _prompt_ids(enc)
    ours = enc.encode_chunks(ids, clip_skip=1)
    assert ours.shape == (len(PROMPTS), POS, SD1_W) and ours.dtype == torch.float32
    assert _rel_err(ours, ref(input_ids=ids).last_hidden_state) <= 1e-4


def test_sd1_clip_skip_2_matches_diffusers(sd1):
    enc, ref = sd1
    ids = _prompt_ids(enc)
    with torch.no_grad():
        expected = ref.final_layer_norm(ref(input_ids=ids, output_hidden_states=True).hidden_states[-2])
    ours = enc.encode_chunks(ids, clip_skip=2)
    assert _rel_err(ours, expected) <= 1e-4
    assert _rel_err(ours, enc.encode_chunks(ids, clip_skip=1)) > 1e-2  # really a different layer


def test_sd2_penultimate_matches_diffusers(sd2):
    enc, ref = sd2
    assert enc.model.config.num_hidden_layers == SD2_LAYERS - 1  # the unused last block is not built
    ids = _prompt_ids(enc)
    assert ids[0, 7:].tolist() == [0] * (POS - 7)  # OpenCLIP padding reached the model
    assert _rel_err(enc.encode_chunks(ids), ref(input_ids=ids).last_hidden_state) <= 1e-4


def test_sd2_clip_skip_goes_back_one_block(sd2):
    enc, ref = sd2
    ids = _prompt_ids(enc)
    with torch.no_grad():
        expected = ref.final_layer_norm(ref(input_ids=ids, output_hidden_states=True).hidden_states[-2])
    assert _rel_err(enc.encode_chunks(ids, clip_skip=2), expected) <= 1e-4


def test_model_dtype_is_returned():
    file = _sd1_file(64, 1, seed=3)
    cfg = text_encoder_config_from_shapes("clip", SD1_PREFIX, _shapes(file))
    enc = text_encoder_from_state_dict(cfg, _strip(file, SD1_PREFIX), torch.bfloat16, "cpu")
    assert enc.encode(["a cat"]).dtype == torch.bfloat16
    assert all(not t.is_meta for t in [*enc.parameters(), *enc.buffers()])
    assert not any(t.requires_grad for t in enc.parameters())


# --- encode / chunking ----------------------------------------------------------------------


def test_encode_pads_prompts_to_the_same_chunk_count(sd1):
    enc, _ = sd1
    long_prompt = "cat " * 100
    out = enc.encode(["a cat", long_prompt])
    assert out.shape == (2, 2 * POS, SD1_W)
    empty = enc.encode_chunks(torch.tensor(enc.tokenize_chunks("")))[0]
    assert torch.equal(out[0, :POS], enc.encode(["a cat"])[0])
    assert torch.allclose(out[0, POS:], empty, atol=1e-6)
    assert torch.allclose(out[1], torch.cat(list(enc.encode_chunks(torch.tensor(enc.tokenize_chunks(long_prompt))))),
                          atol=1e-6)
    assert enc.encode(["a cat"], min_chunks=3).shape == (1, 3 * POS, SD1_W)


def test_encode_rejects_a_bare_string(sd1):
    with pytest.raises(ValueError, match="prompts"):
        sd1[0].encode("a cat")


def test_chunking_of_a_long_prompt_sd1_and_sd2(sd1, sd2):
    cat = 2368
    for enc, pad in ((sd1[0], EOS), (sd2[0], 0)):
        assert enc.count_tokens("cat " * 100) == 100
        first, second = enc.tokenize_chunks("cat " * 100)
        assert first == [BOS] + [cat] * 75 + [EOS]
        assert second == [BOS] + [cat] * 25 + [EOS] + [pad] * 50
        assert enc.tokenize_chunks("") == [[BOS, EOS] + [pad] * 75]
        assert len(enc.tokenize_chunks("cat " * 75)) == 1  # exactly full: no extra empty chunk


def test_chunks_pad_after_the_first_end_token():
    def ids(pad):
        chunks = build_chunks([WeightedText("x")], lambda _: [5, EOS, 6], bos_id=BOS, eos_id=EOS, pad_id=pad,
                              comma_id=None, chunk_tokens=5)
        return [c.ids for c in chunks]
    assert ids(0) == [[BOS, 5, EOS, 0, 0, 0, 0]]
    assert ids(EOS) == [[BOS, 5, EOS, 6, EOS, EOS, EOS]]


@pytest.mark.parametrize("bad", [0, -1, SD1_LAYERS + 1, 1.5])
def test_clip_skip_validation(sd1, bad):
    with pytest.raises(ValueError, match=rf"clip_skip.*1\.\.{SD1_LAYERS}.*{bad}"):
        sd1[0].encode_chunks(torch.tensor([sd1[0].tokenize_chunks("")[0]]), clip_skip=bad)


def test_clip_skip_range_of_sd2_excludes_the_unused_block(sd2):
    with pytest.raises(ValueError, match=rf"1\.\.{SD2_LAYERS - 1}"):
        sd2[0].encode(["x"], clip_skip=SD2_LAYERS)


# --- tokenizer --------------------------------------------------------------------------------


def test_tokenizer_known_ids():
    tok = load_clip_tokenizer()
    assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok) == VOCAB and (tok.bos_token_id, tok.eos_token_id) == (BOS, EOS)
    assert load_clip_tokenizer() is tok


def test_tokenizer_from_a_folder(tmp_path):
    vocab = ["a</w>", "c", "a", "t</w>", "at</w>", "cat</w>", "<|startoftext|>", "<|endoftext|>"]
    (tmp_path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\na t</w>\nc at</w>\n")
    tok = load_clip_tokenizer(tmp_path)
    assert tok("cat a")["input_ids"] == [6, 5, 0, 7]
    assert load_clip_tokenizer(tmp_path) is tok
    assert len(load_clip_tokenizer(tmp_path / "missing")) == VOCAB  # no files there: the standard one


# --- key conversion -------------------------------------------------------------------------


def test_openclip_to_transformers_splits_qkv_in_order():
    w = 4
    sd = {
        "transformer.resblocks.0.attn.in_proj_weight": torch.arange(3 * w * w, dtype=torch.float32).reshape(3 * w, w),
        "transformer.resblocks.0.attn.in_proj_bias": torch.arange(3 * w, dtype=torch.float32),
        "transformer.resblocks.0.mlp.c_fc.weight": torch.ones(8, w),
        "positional_embedding": torch.zeros(77, w),
        "ln_final.bias": torch.zeros(w),
        "text_projection": torch.zeros(w, w),
        "logit_scale": torch.tensor(1.0),
        "attn_mask": torch.zeros(77, 77),
        "something.else": torch.zeros(1),
    }
    out = openclip_to_transformers(sd)
    keys = {k.removeprefix("text_model.") for k in out}
    assert keys == {
        "encoder.layers.0.self_attn.q_proj.weight", "encoder.layers.0.self_attn.k_proj.weight",
        "encoder.layers.0.self_attn.v_proj.weight", "encoder.layers.0.self_attn.q_proj.bias",
        "encoder.layers.0.self_attn.k_proj.bias", "encoder.layers.0.self_attn.v_proj.bias",
        "encoder.layers.0.mlp.fc1.weight", "embeddings.position_embedding.weight", "final_layer_norm.bias",
        "something.else",  # unknown keys pass through so a strict load reports them
    }
    pre = next(iter(out)).split("encoder.")[0]
    for i, name in enumerate("qkv"):
        assert torch.equal(out[f"{pre}encoder.layers.0.self_attn.{name}_proj.weight"],
                           sd["transformer.resblocks.0.attn.in_proj_weight"][i * w : (i + 1) * w])
        assert out[f"{pre}encoder.layers.0.self_attn.{name}_proj.bias"].tolist() == list(range(i * w, (i + 1) * w))
    assert openclip_to_transformers({}) == {} and "logit_scale" in sd  # pure: input untouched


def test_hf_clip_to_transformers_matches_the_installed_model():
    file = _strip(_sd1_file(64, 1), SD1_PREFIX)
    out = hf_clip_to_transformers(file)
    config = CLIPTextConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=1, num_attention_heads=1)
    with torch.device("meta"):
        assert set(out) == set(CLIPTextModel(config).state_dict())
    # Old SD 1 files without the `text_model.` level map to the same keys.
    assert set(hf_clip_to_transformers({k.removeprefix("text_model."): v for k, v in file.items()})) == set(out)


def test_key_mismatch_is_a_value_error_listing_keys():
    file = _strip(_sd2_file(64, 2), SD2_PREFIX)
    cfg = text_encoder_config_from_shapes("openclip", "", _shapes(file))
    del file["ln_final.weight"]
    file["transformer.resblocks.0.bogus.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"1 missing \(e\.g\. .*final_layer_norm\.weight\).*1 unexpected.*bogus"):
        text_encoder_from_state_dict(cfg, file, torch.float32, "cpu")


# --- config inference -------------------------------------------------------------------------


def test_config_from_shapes_of_full_size_sd1_and_sd2():
    p = SD1_PREFIX + "text_model."
    sd1 = {p + "embeddings.token_embedding.weight": (49408, 768), p + "embeddings.position_embedding.weight": (77, 768),
           p + "embeddings.position_ids": (1, 77), "model.diffusion_model.out.2.bias": (4,)}
    sd1 |= {f"{p}encoder.layers.{i}.mlp.fc1.weight": (3072, 768) for i in range(12)}
    assert text_encoder_config_from_shapes("clip", SD1_PREFIX, sd1) == TextEncoderConfig(
        layout="clip", prefix=SD1_PREFIX, width=768, layers=12, heads=12, mlp_width=3072,
        activation="quick_gelu", pad_token_id=49407, default_layer="last")
    old = {k.replace("text_model.", ""): v for k, v in sd1.items()}
    assert text_encoder_config_from_shapes("clip", SD1_PREFIX, old).layers == 12

    p = SD2_PREFIX
    sd2 = {p + "token_embedding.weight": (49408, 1024), p + "positional_embedding": (77, 1024),
           p + "text_projection": (1024, 1024)}
    for i in range(24):
        sd2 |= {f"{p}transformer.resblocks.{i}.mlp.c_fc.weight": (4096, 1024),
                f"{p}transformer.resblocks.{i}.attn.in_proj_weight": (3072, 1024)}
    assert text_encoder_config_from_shapes("openclip", SD2_PREFIX, sd2) == TextEncoderConfig(
        layout="openclip", prefix=SD2_PREFIX, width=1024, layers=24, heads=16, mlp_width=4096,
        activation="gelu", pad_token_id=0, default_layer="penultimate")


def test_config_from_shapes_of_tiny_models_and_missing_keys():
    cfg = text_encoder_config_from_shapes("openclip", SD2_PREFIX, _shapes(_sd2_file(32, 2)))
    assert (cfg.width, cfg.layers, cfg.heads, cfg.mlp_width) == (32, 2, 1, 128)
    with pytest.raises(ValueError, match="token_embedding"):
        text_encoder_config_from_shapes("openclip", "wrong.", _shapes(_sd2_file(32, 2)))
