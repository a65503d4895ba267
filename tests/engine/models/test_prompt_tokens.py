"""A1111's chunking rules (BREAK, comma backtracking, embeddings), emphasis, and textual-inversion files."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from webui.engine.models.embeddings import load_embedding
from webui.engine.models.prompt_tokens import Embedding, EmbeddingIndex, apply_emphasis, build_chunks
from webui.engine.prompts import ChunkBreak, WeightedText
from webui.errors import ModelLoadError

BOS, EOS, COMMA = 100, 101, 99


def words(text: str) -> list[int]:
    """A toy tokenizer: one token per word, "," is its own token, "wN" -> N."""
    out = []
    for word in text.replace(",", " , ").split():
        out.append(COMMA if word == "," else int(word[1:]))
    return out


def chunks(pieces, embeddings=None, chunk_tokens=10):
    kwargs = {"embeddings": embeddings} if embeddings else {}
    return build_chunks(pieces, words, bos_id=BOS, eos_id=EOS, pad_id=EOS, comma_id=COMMA,
                        chunk_tokens=chunk_tokens, **kwargs)


def test_weights_follow_their_tokens_and_padding_is_neutral():
    [chunk] = chunks([WeightedText("w1 w2", 1.0), WeightedText("w3", 1.5)])
    assert chunk.ids == [BOS, 1, 2, 3] + [EOS] * 8
    assert chunk.multipliers == [1.0, 1.0, 1.0, 1.5] + [1.0] * 8
    assert chunk.weighted


def test_break_starts_a_new_chunk():
    result = chunks([WeightedText("w1"), ChunkBreak(), WeightedText("w2")])
    assert [c.ids[:3] for c in result] == [[BOS, 1, EOS], [BOS, 2, EOS]]


def test_comma_backtracking_moves_the_words_after_the_last_comma():
    # 10-token chunks: "w1 .. w7 , w8 w9" fills the chunk; w10 arrives with a comma 2 tokens back.
    text = "w1 w2 w3 w4 w5 w6 w7 , w8 w9 w10"
    first, second = chunks([WeightedText(text)])
    assert first.ids == [BOS, 1, 2, 3, 4, 5, 6, 7, COMMA] + [EOS] * 3
    assert second.ids[:5] == [BOS, 8, 9, 10, EOS]


def test_no_backtracking_when_the_comma_is_too_far_back():
    text = "w1 , " + " ".join(f"w{i}" for i in range(2, 40))  # the comma is > 20 tokens back at the cut
    first = chunks([WeightedText(text)], chunk_tokens=30)[0]
    assert first.ids[1:31] == [1, COMMA] + list(range(2, 30))


def test_an_embedding_takes_its_vectors_length_and_is_never_split():
    embedding = Embedding("w7", {4: torch.ones(3, 4)})
    index = EmbeddingIndex([embedding], words)
    first, second = chunks([WeightedText("w1 w2 w3 w4 w5 w6 w8 w9 w7")], embeddings=index)
    assert first.ids[1:10] == [1, 2, 3, 4, 5, 6, 8, 9, EOS] and not first.fixes  # 8 + 3 > 10: moved on
    assert second.ids[1:4] == [0, 0, 0] and second.fixes == [(1, embedding)]


def test_emphasis_scales_tokens_and_restores_the_mean():
    features = torch.randn(6, 8) + 1.0
    multipliers = torch.tensor([1.0, 1.0, 1.5, 1.0, 1.0, 1.0])
    out = apply_emphasis(features, multipliers)
    assert torch.allclose(out.mean(), features.mean(), atol=1e-6)
    ratio = out / features
    assert ratio[2].mean() == pytest.approx(1.5 * ratio[0].mean().item(), rel=1e-4)


@pytest.mark.parametrize("layout", ["a1111-safetensors", "a1111-pt", "diffusers-bin", "sdxl"])
def test_embedding_files(tmp_path, layout):
    vectors = torch.randn(2, 8)
    if layout == "a1111-safetensors":
        path = tmp_path / "style.safetensors"
        save_file({"emb_params": vectors}, str(path))
    elif layout == "a1111-pt":
        path = tmp_path / "style.pt"
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": "style", "step": 3}, path)
    elif layout == "diffusers-bin":
        path = tmp_path / "style.bin"
        vectors = vectors[:1]
        torch.save({"<style>": vectors[0]}, path)
    else:
        path = tmp_path / "style.safetensors"
        save_file({"clip_l": vectors, "clip_g": torch.randn(2, 12)}, str(path))
    embedding = load_embedding(path)
    assert embedding.name == "style"
    assert torch.equal(embedding.vectors[8], vectors)
    if layout == "sdxl":
        assert embedding.vectors[12].shape == (2, 12)


def test_a_file_that_is_not_an_embedding_is_refused_by_name(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"a.weight": torch.zeros(2, 3, 4), "b.weight": torch.zeros(5)}, str(path))
    with pytest.raises(ModelLoadError, match="model.safetensors.*not a textual-inversion embedding"):
        load_embedding(path)
