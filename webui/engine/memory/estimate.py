"""Peak memory of a request, estimated before it runs, so the strategy can be chosen up front.

The activations are measured by a dry run: the network is built on the meta device (shapes, no
storage, no arithmetic) and run on meta inputs of the request's shapes while a dispatch mode adds up
the bytes of every tensor alive; the peak of that sum is the activation peak. This follows the real
code path (attention backend, skip connections, the VAE's tiles) instead of a formula that drifts
from it. The weights are counted from the loaded networks. What a dry run cannot see (the
allocator's rounding and caching, kernels' scratch space) is covered by `OVERHEAD`, measured against
peak RSS on the CPU (tests/engine/memory/test_estimate.py states the bound).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..models.specs import UNetConfig, VAEConfig
from .attention import AttentionConfig, set_attention

OVERHEAD = 1.15  # measured peak / dry-run peak on the CPU was 0.9-1.1 (see the test); rounded up


class _LiveBytes(TorchDispatchMode):
    """Tracks the bytes of tensors created inside it that are still alive, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._refs: dict[int, int] = {}  # storage -> live tensors using it

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key not in self._refs:
            self._refs[key] = 0
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        self._refs[key] += 1
        weakref.finalize(t, self._release, key, storage.nbytes())

    def _release(self, key: int, nbytes: int) -> None:
        self._refs[key] -= 1
        if not self._refs[key]:
            del self._refs[key]
            self.live -= nbytes


def dry_run_peak(fn: Callable[[], object]) -> int:
    """Peak bytes of the tensors `fn` creates (run it on meta tensors)."""
    tracker = _LiveBytes()
    with torch.inference_mode(), tracker:
        result = fn()
        del result
    return tracker.peak


@lru_cache(maxsize=64)
def unet_activation_bytes(cfg: UNetConfig, batch: int, height: int, width: int, tokens: int, dtype: torch.dtype,
                          attention: AttentionConfig) -> int:
    """Activation peak of one UNet call on a (batch, in_channels, height, width) latent."""
    from ..models.unet import UNetModel

    model = _meta_model(UNetModel, cfg, dtype, attention)

    def run():
        x = torch.empty(batch, cfg.in_channels, height, width, device="meta", dtype=dtype)
        t = torch.empty(batch, device="meta", dtype=torch.float32)
        context = torch.empty(batch, tokens, cfg.context_dim, device="meta", dtype=dtype)
        y = torch.empty(batch, cfg.adm_in_channels, device="meta", dtype=dtype) if cfg.adm_in_channels else None
        return model(x, t, context, y)

    return dry_run_peak(run)


@lru_cache(maxsize=64)
def vae_decode_bytes(cfg: VAEConfig, batch: int, height: int, width: int, dtype: torch.dtype,
                     attention: AttentionConfig) -> int:
    """Activation peak of decoding a (batch, embed_dim, height, width) latent in one piece."""
    from ..models.vae import AutoencoderKL

    model = _meta_model(AutoencoderKL, cfg, dtype, attention)
    return dry_run_peak(lambda: model.decode(torch.empty(batch, cfg.embed_dim, height, width, device="meta",
                                                         dtype=dtype)))


@lru_cache(maxsize=64)
def vae_encode_bytes(cfg: VAEConfig, batch: int, height: int, width: int, dtype: torch.dtype,
                     attention: AttentionConfig) -> int:
    """Activation peak of encoding a (batch, 3, height, width) image in one piece."""
    from ..models.vae import AutoencoderKL

    model = _meta_model(AutoencoderKL, cfg, dtype, attention)
    return dry_run_peak(lambda: model.encode(torch.empty(batch, 3, height, width, device="meta", dtype=dtype)))


def _meta_model(cls: type[nn.Module], cfg, dtype: torch.dtype, attention: AttentionConfig) -> nn.Module:
    with torch.device("meta"):
        model = cls(cfg).to(dtype).eval()
    set_attention(model, attention)
    return model


def module_bytes(module: nn.Module) -> int:
    """Bytes of a network's weights and buffers."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


@dataclass(frozen=True)
class MemoryEstimate:
    """A request's estimated peak device memory, per stage: weights on the device then + activations."""

    stages: dict[str, int]

    @property
    def peak(self) -> int:
        return max(self.stages.values())

    @property
    def peak_stage(self) -> str:
        return max(self.stages, key=self.stages.get)
