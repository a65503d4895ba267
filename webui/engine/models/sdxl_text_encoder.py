"""SDXL's text conditioning: several CLIP encoders whose features are concatenated, plus a pooled vector.

SDXL base: [CLIP-L penultimate (768) | OpenCLIP bigG penultimate (1280)] -> 2048 wide, neither through
its final layer norm; pooled = bigG's final_layer_norm(last block)[first end token] @ text_projection.
SDXL refiner: bigG alone (1280 wide) and its pooled output.

`SDXLTextEncoder` has the surface of `SDTextEncoder` (`tokenize_chunks`, `count_tokens`, `encode`,
`encode_with_pooled`, `tokenizer`), so the pipelines treat both alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import CLIPTokenizer

from ..prompts import Piece, WeightedText
from .prompt_tokens import Embedding, EmbeddingIndex, TokenChunk
from .text_encoders import SDTextEncoder


class SDXLTextEncoder(torch.nn.Module):
    """Prompts -> (context (B, 77n, sum of widths), pooled (B, projection_dim)), A1111-style chunks.

    Every encoder chunks the same tokens (they share CLIP's vocabulary) and pads with its own id:
    CLIP-L with the end token, bigG with 0. Clip skip N moves every encoder N - 1 blocks back from the
    penultimate block (clip skip 1 = what SDXL was trained with); the pooled output always comes from
    the last block. The pooled vector is the FIRST chunk's, as in A1111.
    """

    def __init__(self, encoders: Sequence[SDTextEncoder]) -> None:
        super().__init__()
        if not encoders:
            raise ValueError("SDXLTextEncoder needs at least one text encoder")
        pooled = [e for e in encoders if e.projection is not None]
        if len(pooled) != 1:
            raise ValueError(f"exactly one encoder must have a text projection (pooled output), got {len(pooled)}")
        self.encoders = torch.nn.ModuleList(encoders)
        self._pooled_index = list(encoders).index(pooled[0])

    @property
    def first(self) -> SDTextEncoder:
        return self.encoders[0]  # type: ignore[return-value]

    @property
    def tokenizer(self) -> CLIPTokenizer:
        return self.first.tokenizer

    @property
    def width(self) -> int:
        return sum(e.cfg.width for e in self.encoders)  # type: ignore[misc]

    @property
    def pooled_dim(self) -> int:
        return self.encoders[self._pooled_index].cfg.projection_dim  # type: ignore[return-value]

    @property
    def max_clip_skip(self) -> int:
        return min(e.top_layer for e in self.encoders)  # type: ignore[misc]

    @property
    def device(self) -> torch.device:
        return self.first.device

    @property
    def dtype(self) -> torch.dtype:
        return self.first.dtype

    def tokenize(self, prompt: str) -> list[int]:
        return self.first.tokenize(prompt)

    def count_tokens(self, prompt: str) -> int:
        """Number of prompt tokens, excluding start/end (the UI's live counter)."""
        return self.first.count_tokens(prompt)

    def tokenize_chunks(self, prompt: str) -> list[list[int]]:
        """The first encoder's chunks (the others have as many, padded with their own id)."""
        return self.first.tokenize_chunks(prompt)

    def chunks_of(self, pieces: Sequence[Piece], embeddings: EmbeddingIndex | None = None) -> list[TokenChunk]:
        return self.first.chunks_of(pieces, embeddings)

    def embedding_index(self, embeddings: Sequence[Embedding]) -> EmbeddingIndex:
        """Embeddings with vectors for every encoder (SDXL files hold clip_l and clip_g), so that all
        encoders place them alike."""
        return self.first.embedding_index(embeddings, [e.cfg.width for e in self.encoders])

    def _check_clip_skip(self, clip_skip: int) -> None:
        if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or not 1 <= clip_skip <= self.max_clip_skip:
            raise ValueError(f"clip_skip must be an integer in 1..{self.max_clip_skip} for this model, got {clip_skip!r}")

    @torch.inference_mode()
    def encode(self, prompts: Sequence[str], clip_skip: int = 1, min_chunks: int = 1) -> Tensor:
        """Prompts -> (B, 77 * n, width) context (see `SDTextEncoder.encode` for n)."""
        return self.encode_with_pooled(prompts, clip_skip, min_chunks)[0]

    @torch.inference_mode()
    def encode_with_pooled(
        self, prompts: Sequence[str], clip_skip: int = 1, min_chunks: int = 1
    ) -> tuple[Tensor, Tensor]:
        """Prompts -> ((B, 77 * n, width) context, (B, pooled_dim) pooled output of each first chunk)."""
        if isinstance(prompts, str) or not prompts:
            raise ValueError(f"prompts must be a non-empty sequence of strings, got {prompts!r}")
        return self.encode_pieces([[WeightedText(p)] for p in prompts], clip_skip, min_chunks)

    @torch.inference_mode()
    def encode_pieces(
        self, prompts: Sequence[Sequence[Piece]], clip_skip: int = 1, min_chunks: int = 1,
        pooled: bool | None = None, embeddings: EmbeddingIndex | None = None,
    ) -> tuple[Tensor, Tensor]:
        """`encode_with_pooled` for weighted pieces and embeddings; each encoder applies emphasis to its own
        features, as A1111 does. (`pooled` is accepted for symmetry: SDXL always has a pooled output.)"""
        self._check_clip_skip(clip_skip)
        # The same chunk count for every encoder, so their features line up token by token.
        n = max(min_chunks, *(len(self.chunks_of(p, embeddings)) for p in prompts))
        features, pooled_out = [], None
        for i, encoder in enumerate(self.encoders):
            context, p = encoder.encode_pieces(prompts, clip_skip, n, pooled=i == self._pooled_index,
                                               embeddings=embeddings)
            features.append(context)
            pooled_out = p if p is not None else pooled_out
        assert pooled_out is not None
        return torch.cat(features, dim=-1), pooled_out  # (B, 77n, 768) + (B, 77n, 1280) -> (B, 77n, 2048)
