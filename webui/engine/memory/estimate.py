"""Peak memory of a request, estimated before it runs, so the strategy can be chosen up front.

The activations are measured by a dry run: the network is built on the meta device (shapes, no
storage, no arithmetic) and run on meta inputs of the request's shapes while a dispatch mode adds up
the bytes of every tensor alive; the peak of that sum is the activation peak. This follows the real
code path (attention backend, skip connections, the VAE's tiles) instead of a formula that drifts
from it. The weights are counted from the loaded networks. What a dry run cannot see (the
allocator's rounding and caching, kernels' scratch space such as oneDNN's weight reorders) is
covered by a factor per network, measured against peak RSS on the CPU: the UNet's real peak was
1.5-2.0x its dry run (SD 1.5 at 512 px: 503 MiB against 251), the VAE's 1.27-1.41x.
tests/engine/memory/test_estimate.py states the bound the estimates keep.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..models.specs import UNetConfig, VAEConfig
from .attention import AttentionConfig, set_attention
from .policy import MemoryPolicy, free_device_bytes

if TYPE_CHECKING:
    from ..models.loading import ModelBundle

UNET_OVERHEAD, VAE_OVERHEAD = 2.0, 1.4  # real peak / dry-run peak, the highest measured (see above)


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
    """Estimated activation peak of one UNet call on a (batch, in_channels, height, width) latent."""
    from ..models.unet import UNetModel

    model = _meta_model(UNetModel, cfg, dtype, attention)

    def run():
        x = torch.empty(batch, cfg.in_channels, height, width, device="meta", dtype=dtype)
        t = torch.empty(batch, device="meta", dtype=torch.float32)
        context = torch.empty(batch, tokens, cfg.context_dim, device="meta", dtype=dtype)
        y = torch.empty(batch, cfg.adm_in_channels, device="meta", dtype=dtype) if cfg.adm_in_channels else None
        return model(x, t, context, y)

    return int(dry_run_peak(run) * UNET_OVERHEAD)


@lru_cache(maxsize=64)
def vae_decode_bytes(cfg: VAEConfig, batch: int, height: int, width: int, dtype: torch.dtype,
                     attention: AttentionConfig) -> int:
    """Estimated activation peak of decoding a (batch, embed_dim, height, width) latent in one piece."""
    from ..models.vae import AutoencoderKL

    model = _meta_model(AutoencoderKL, cfg, dtype, attention)
    z = torch.empty(batch, cfg.embed_dim, height, width, device="meta", dtype=dtype)
    return int(dry_run_peak(lambda: model.decode(z)) * VAE_OVERHEAD)


@lru_cache(maxsize=64)
def vae_encode_bytes(cfg: VAEConfig, batch: int, height: int, width: int, dtype: torch.dtype,
                     attention: AttentionConfig) -> int:
    """Estimated activation peak of encoding a (batch, 3, height, width) image in one piece."""
    from ..models.vae import AutoencoderKL

    model = _meta_model(AutoencoderKL, cfg, dtype, attention)
    x = torch.empty(batch, 3, height, width, device="meta", dtype=dtype)
    return int(dry_run_peak(lambda: model.encode(x)) * VAE_OVERHEAD)


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


def estimate_generation(bundle: ModelBundle, policy: MemoryPolicy, width: int, height: int, batch_size: int,
                        tokens: int = 77) -> MemoryEstimate:
    """A txt2img job's peak device memory per stage under `policy`: the weights on the device at that
    stage (by offload mode) plus the stage's activations (the UNet runs the batch twice, for CFG)."""
    weights = {"unet": module_bytes(bundle.unet), "text_encoder": module_bytes(bundle.text_encoder),
               "vae": module_bytes(bundle.vae)}
    offload = policy.offload if policy.can_offload else "none"

    def resident(network: str) -> int:
        if offload in ("none", "auto"):
            return sum(weights.values())
        return weights[network] if offload == "model" else 0  # sequential: one layer at a time

    f = bundle.spec.vae.downscale
    h, w = height // f, width // f
    unet = unet_activation_bytes(bundle.spec.unet, 2 * batch_size, h, w, tokens, policy.dtypes.unet, policy.attention)
    th, tw = (min(policy.vae_tile, h), min(policy.vae_tile, w)) if policy.vae_tiling == "on" else (h, w)
    blend = 2 * batch_size * 3 * height * width * 4 if (th, tw) != (h, w) else 0  # fp32 sum and weights
    decode = vae_decode_bytes(bundle.spec.vae, batch_size, th, tw, policy.dtypes.vae, policy.attention) + blend
    return MemoryEstimate({"text encoding": resident("text_encoder"), "sampling": resident("unet") + unet,
                           "VAE decode": resident("vae") + decode})


def plan_offload(bundle: ModelBundle, policy: MemoryPolicy, width: int, height: int, batch_size: int) -> MemoryPolicy:
    """`policy` with an "auto" offload mode decided for this job, before it runs: the lightest mode
    under which the estimated sampling peak fits the device's free memory (plus what the bundle's
    weights already hold there)."""
    if policy.offload != "auto" or not policy.can_offload:
        return policy
    free = free_device_bytes(policy.device)
    if free is None:
        return policy
    on_device = sum(module_bytes(getattr(bundle, name)) for name in bundle.placement.on_device()) \
        if bundle.placement is not None else 0
    for mode in ("none", "model", "sequential"):
        if estimate_generation(bundle, replace(policy, offload=mode), width, height, batch_size).peak <= free + on_device:
            return replace(policy, offload=mode)
    return replace(policy, offload="sequential")
