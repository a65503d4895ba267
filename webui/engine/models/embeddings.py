"""Textual-inversion embeddings from files: A1111's `.pt`/`.safetensors` formats, diffusers' one-token
`.bin`, and SDXL's two-encoder files (`clip_l`, `clip_g`). `.pt`/`.bin` are read weights-only.

An embedding is used by writing its name (the file name without extension) in a prompt.
"""

from __future__ import annotations

from pathlib import Path

import torch

from webui.errors import ModelLoadError

from .checkpoint_file import open_checkpoint
from .prompt_tokens import Embedding

SDXL_KEYS = ("clip_l", "clip_g")


def load_embedding(path: Path) -> Embedding:
    """The embedding in `path`; raises ModelLoadError naming the file when it is not one."""
    with open_checkpoint(path) as f:
        tensors = {key: f.read(key) for key in f.shapes}
    vectors = _vectors(tensors)
    if not vectors:
        raise ModelLoadError(path, "not a textual-inversion embedding (expected 'emb_params', 'string_to_param.*', "
                             "'clip_l'/'clip_g' or one token tensor)")
    lengths = {v.shape[0] for v in vectors.values()}
    if len(lengths) != 1:
        raise ModelLoadError(path, f"its parts have different numbers of vectors: {sorted(lengths)}")
    return Embedding(path.stem, vectors)


def _vectors(tensors: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    def as_rows(t: torch.Tensor) -> torch.Tensor:  # (W,) or (n, W) -> (n, W) float32
        return (t[None] if t.ndim == 1 else t.reshape(-1, t.shape[-1])).detach().float()

    if all(k in tensors for k in SDXL_KEYS):
        return {as_rows(tensors[k]).shape[1]: as_rows(tensors[k]) for k in SDXL_KEYS}
    for key in ("emb_params", "string_to_param.*"):  # A1111 (safetensors and .pt after flattening)
        if key in tensors:
            rows = as_rows(tensors[key])
            return {rows.shape[1]: rows}
    if len(tensors) == 1:  # diffusers: {"<token>": (W,)}, the only entry
        [only] = tensors.values()
        if only.is_floating_point() and only.ndim in (1, 2):
            rows = as_rows(only)
            return {rows.shape[1]: rows}
    return {}

