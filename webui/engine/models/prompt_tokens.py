"""Weighted prompt pieces -> 77-token chunks with per-token multipliers and embedding vectors,
following AUTOMATIC1111's rules (`sd_hijack_clip.tokenize_line`):

- 75 tokens per chunk between the start and end tokens, padded with the end token;
- `BREAK` closes the current chunk;
- when a chunk fills up and a comma is within the last 20 tokens, the tokens after that comma move to
  the next chunk ("comma padding backtrack", A1111's default of 20);
- a textual-inversion embedding written by name takes as many positions as it has vectors and is
  never split across chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from webui.engine.prompts import ChunkBreak, Piece, WeightedText

COMMA_BACKTRACK = 20  # A1111's "comma_padding_backtrack" default


@dataclass(frozen=True)
class Embedding:
    """A textual-inversion embedding: the vectors that replace its name, one tensor per text width
    (SD 1: {768: (n, 768)}; SDXL: {768: ..., 1280: ...})."""

    name: str
    vectors: Mapping[int, torch.Tensor]

    @property
    def length(self) -> int:
        return next(iter(self.vectors.values())).shape[0]


@dataclass
class TokenChunk:
    """One chunk as the text model sees it: ids, a multiplier per position, and embedding fixes."""

    ids: list[int]
    multipliers: list[float]
    fixes: list[tuple[int, Embedding]] = field(default_factory=list)  # (position in ids, embedding)

    @property
    def weighted(self) -> bool:
        return any(m != 1.0 for m in self.multipliers)


class EmbeddingIndex:
    """Finds embedding names in token lists (longest match first), as A1111's embedding database."""

    def __init__(self, embeddings: Sequence[Embedding], tokenize: Callable[[str], list[int]]) -> None:
        self._by_first: dict[int, list[tuple[list[int], Embedding]]] = {}
        for embedding in embeddings:
            ids = tokenize(embedding.name)
            if ids:
                self._by_first.setdefault(ids[0], []).append((ids, embedding))
        for candidates in self._by_first.values():
            candidates.sort(key=lambda c: -len(c[0]))

    def match(self, tokens: Sequence[int], position: int) -> tuple[Embedding, int] | None:
        """(embedding, number of prompt tokens its name spans) at `position`, or None."""
        for ids, embedding in self._by_first.get(tokens[position], ()):
            if list(tokens[position : position + len(ids)]) == ids:
                return embedding, len(ids)
        return None


NO_EMBEDDINGS = EmbeddingIndex([], lambda _: [])


def build_chunks(
    pieces: Sequence[Piece],
    tokenize: Callable[[str], list[int]],
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    comma_id: int | None,
    embeddings: EmbeddingIndex = NO_EMBEDDINGS,
    chunk_tokens: int = 75,
) -> list[TokenChunk]:
    """A1111's chunking of weighted pieces; no tokens give one empty chunk."""
    chunks: list[TokenChunk] = []
    tokens: list[int] = []
    weights: list[float] = []
    fixes: list[tuple[int, Embedding]] = []
    last_comma = -1

    def close() -> None:
        nonlocal tokens, weights, fixes, last_comma
        padding = chunk_tokens - len(tokens)
        ids = [bos_id, *tokens] + [eos_id] * (padding + 1)
        if pad_id != eos_id:  # OpenCLIP pads with 0 after the first end token
            first_end = ids.index(eos_id)
            ids[first_end + 1 :] = [pad_id] * (len(ids) - first_end - 1)
        chunks.append(TokenChunk(ids, [1.0, *weights] + [1.0] * (padding + 1), [(1 + p, e) for p, e in fixes]))
        tokens, weights, fixes, last_comma = [], [], [], -1

    for piece in pieces:
        if isinstance(piece, ChunkBreak):
            close()
            continue
        assert isinstance(piece, WeightedText)
        ids = tokenize(piece.text)
        position = 0
        while position < len(ids):
            token = ids[position]
            if token == comma_id:
                last_comma = len(tokens)
            elif len(tokens) == chunk_tokens and last_comma != -1 and len(tokens) - last_comma <= COMMA_BACKTRACK:
                cut = last_comma + 1  # the tokens after the comma start the next chunk
                moved_tokens, moved_weights = tokens[cut:], weights[cut:]
                moved_fixes = [(p - cut, e) for p, e in fixes if p >= cut]
                tokens, weights, fixes = tokens[:cut], weights[:cut], [(p, e) for p, e in fixes if p < cut]
                close()
                tokens, weights, fixes = moved_tokens, moved_weights, moved_fixes
            if len(tokens) == chunk_tokens:
                close()
            found = embeddings.match(ids, position)
            if found is None:
                tokens.append(token)
                weights.append(piece.weight)
                position += 1
                continue
            embedding, spanned = found
            length = min(embedding.length, chunk_tokens)
            if len(tokens) + length > chunk_tokens:
                close()
            fixes.append((len(tokens), embedding))
            tokens += [0] * length  # placeholders; the vectors replace their embeddings
            weights += [piece.weight] * length
            position += spanned
    if tokens or not chunks:
        close()
    return chunks


def apply_emphasis(features: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """A1111's "Original" emphasis on one chunk's (77, width) features: scale each token's features by
    its multiplier, then restore the chunk's original mean."""
    original_mean = features.mean()
    weighted = features * multipliers[:, None].to(features.dtype)
    return weighted * (original_mean / weighted.mean())
