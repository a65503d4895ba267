"""Attention backends: PyTorch SDPA (default), sliced (low memory) and a plain fp32 reference.

All take (B, heads, N, d) queries and (B, heads, M, d) keys/values and return (B, heads, N, d).
Which backend a model uses is an `AttentionConfig` set on its attention modules with `set_attention`
(an instance attribute, no module-level state): the memory policy, built from config, decides it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

BACKENDS = ("sdpa", "sliced", "reference")
DEFAULT_SLICE_BUDGET_BYTES = 256 * 1024**2  # score matrix of one query chunk, when slice_size is auto


@dataclass(frozen=True)
class AttentionConfig:
    """backend: "sdpa", "sliced" or "reference"; slice_size: query rows per chunk for "sliced"
    (None = auto: the largest chunk whose (chunk x M) score matrix over all batches and heads fits
    in `budget_bytes`)."""

    backend: str = "sdpa"
    slice_size: int | None = None
    budget_bytes: int = DEFAULT_SLICE_BUDGET_BYTES

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {self.backend!r}; expected one of {BACKENDS}")
        if self.slice_size is not None and self.slice_size < 1:
            raise ValueError(f"slice_size must be >= 1 or None (auto), got {self.slice_size}")
        if self.budget_bytes < 1:
            raise ValueError(f"budget_bytes must be >= 1, got {self.budget_bytes}")


DEFAULT_ATTENTION = AttentionConfig()


def auto_slice_size(q: torch.Tensor, k: torch.Tensor, budget_bytes: int = DEFAULT_SLICE_BUDGET_BYTES) -> int:
    """Query rows per chunk so that the (B, heads, chunk, M) score matrix stays under `budget_bytes`."""
    *batch, n, _ = q.shape
    m = k.shape[-2]
    per_row = max(1, math.prod(batch) * m * max(q.element_size(), 4))  # softmax runs in fp32
    return max(1, min(n, budget_bytes // per_row))


def sliced_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slice_size: int | None = None,
                     budget_bytes: int = DEFAULT_SLICE_BUDGET_BYTES) -> torch.Tensor:
    """Exact attention computed `slice_size` query rows at a time (softmax in fp32)."""
    n = q.shape[-2]
    size = slice_size if slice_size is not None else auto_slice_size(q, k, budget_bytes)
    scale = 1.0 / math.sqrt(q.shape[-1])
    kt = k.transpose(-1, -2)
    out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
    for start in range(0, n, size):
        scores = (q[..., start:start + size, :] @ kt) * scale
        weights = scores.softmax(dim=-1, dtype=torch.float32).to(v.dtype)
        out[..., start:start + size, :] = weights @ v
        del scores, weights
    return out


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v, all in fp32, returned in q's dtype."""
    qf, kf, vf = q.float(), k.float(), v.float()
    weights = torch.softmax(qf @ kf.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return (weights @ vf).to(q.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa",
              slice_size: int | None = None, budget_bytes: int = DEFAULT_SLICE_BUDGET_BYTES) -> torch.Tensor:
    """Scaled dot-product attention of (B, heads, N, d) tensors with the named backend."""
    if backend == "sdpa":
        # PyTorch's CPU kernel takes its fused (flash) path only for a unit last-dim stride; otherwise it
        # falls back to the math path, which holds the whole (N x M) score matrix (1 GiB for a 1024px VAE).
        if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        return F.scaled_dot_product_attention(q, k, v)
    if backend == "sliced":
        return sliced_attention(q, k, v, slice_size, budget_bytes)
    if backend == "reference":
        return reference_attention(q, k, v)
    raise ValueError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")


def run_attention(config: AttentionConfig, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`attention` with the backend of `config` (what the model modules call)."""
    return attention(q, k, v, config.backend, config.slice_size, config.budget_bytes)


def set_attention(module: nn.Module, config: AttentionConfig) -> int:
    """Set `config` on every attention module (those with an `attention_config` attribute) under
    `module`, itself included. Returns how many were set."""
    count = 0
    for sub in module.modules():
        if hasattr(sub, "attention_config"):
            sub.attention_config = config
            count += 1
    return count
