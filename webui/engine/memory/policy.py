"""The memory policy: how the engine uses the device's memory, as one object built from config.

`app.py` builds it from the launch flags and Settings (`policy_from_settings`); the model store
loads with its dtypes and places the networks by its offload mode; the pipelines read its attention
backend and VAE tiling. Nothing here is read at import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .attention import BACKENDS, DEFAULT_ATTENTION, AttentionConfig, set_attention
from .devices import ComponentDtypes
from .offload import PLACEMENTS, Placement

if TYPE_CHECKING:
    from ..models.loading import ModelBundle

OFFLOAD_MODES = ("auto", *PLACEMENTS)
VAE_TILING_MODES = ("auto", "on", "off")
VAE_STAGES = ("VAE decode", "VAE encode", "hires upscale")  # the stages of `oom.ADVICE`
ATTENTION_STAGES = ("sampling", "hires sampling", "VAE decode", "VAE encode")
# What `--medvram` / `--lowvram` mean (AUTOMATIC1111's flags), as offload modes.
VRAM_FLAGS = {"medvram": "model", "lowvram": "sequential"}


@dataclass(frozen=True)
class MemoryPolicy:
    """device: where the networks compute; dtypes: each network's dtype; attention: the backend of
    the UNet's and VAE's attention; offload: "none" (everything stays on the device), "model" (only
    the network in use sits on the device), "sequential" (layer by layer, for very small VRAM) or
    "auto" (chosen from the free memory and the estimated need, at load and for each job); vae_tiling: "on", "off", or "auto"
    (tiled when the estimated decode does not fit, or after running out of memory); vae_tile and
    vae_tile_overlap: tile side and overlap in latents (64 = 512 pixels for the SD VAEs)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtypes: ComponentDtypes = ComponentDtypes()
    attention: AttentionConfig = DEFAULT_ATTENTION
    offload: str = "none"
    vae_tiling: str = "auto"
    vae_tile: int = 64
    vae_tile_overlap: int = 16
    channels_last: bool = False  # the UNet's weights and activations in NHWC (faster on some GPUs)
    compile: bool = False  # torch.compile the UNet (slow first step, faster after)

    def __post_init__(self) -> None:
        if self.offload not in OFFLOAD_MODES:
            raise ValueError(f"offload {self.offload!r}: expected one of {', '.join(OFFLOAD_MODES)}")
        if self.vae_tiling not in VAE_TILING_MODES:
            raise ValueError(f"vae_tiling {self.vae_tiling!r}: expected one of {', '.join(VAE_TILING_MODES)}")
        if not 8 <= self.vae_tile <= 512 or not 0 <= self.vae_tile_overlap < self.vae_tile // 2:
            raise ValueError(f"vae_tile {self.vae_tile} / overlap {self.vae_tile_overlap}: need 8 <= tile <= 512 "
                             "and 0 <= overlap < tile / 2 (in latents)")

    @property
    def can_offload(self) -> bool:
        """Offloading moves weights to the CPU between uses: it saves nothing when the device is the CPU."""
        return self.device.type != "cpu"

    def fallbacks(self, stage: str, helps: Callable[[MemoryPolicy, MemoryPolicy], bool] = lambda before, after: True
                  ) -> list[tuple[str, MemoryPolicy]]:
        """The stronger memory savers to retry a job with after it ran out of memory at `stage`, in
        order, as (what changed, the policy); each keeps the savers taken before it. Candidates are
        the savers that act there (tiling for the VAE's stages, sliced attention where attention runs,
        offloading everywhere but on the CPU); `helps(before, after)` keeps only those that lower the
        stage's need (the caller's estimate: PyTorch's fused SDPA needs less than slicing, for one)."""
        candidates: list[tuple[str, Callable[[MemoryPolicy], MemoryPolicy | None]]] = [
            ("tiled VAE", lambda p: replace(p, vae_tiling="on")
             if p.vae_tiling == "auto" and stage in VAE_STAGES else None),
            ("sliced attention", lambda p: replace(p, attention=replace(p.attention, backend="sliced"))
             if p.attention.backend != "sliced" and stage in ATTENTION_STAGES else None),
            ("model offload", lambda p: replace(p, offload="model")
             if p.can_offload and p.offload in ("none", "auto") else None),
            ("sequential offload", lambda p: replace(p, offload="sequential")
             if p.can_offload and p.offload != "sequential" else None),
        ]
        steps: list[tuple[str, MemoryPolicy]] = []
        policy = self
        for name, change in candidates:
            candidate = change(policy)
            if candidate is not None and helps(policy, candidate):
                policy = candidate
                steps.append((name, policy))
        return steps

    def describe(self) -> str:
        """One line for the start-up log."""
        dt = self.dtypes
        names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
        slice_size = self.attention.slice_size or "auto"
        attention = self.attention.backend + (f" ({slice_size})" if self.attention.backend == "sliced" else "")
        return (f"{self.device}, UNet {names[dt.unet]}, text encoder {names[dt.text_encoder]}, VAE {names[dt.vae]}, "
                f"attention {attention}, offload {self.offload}, tiled VAE {self.vae_tiling}")


def apply_policy(bundle: ModelBundle, policy: MemoryPolicy) -> None:
    """Set the policy's attention backend on the bundle's UNet and VAE and place its networks by the
    policy's offload mode ("auto", where it has not been decided, places as "none")."""
    set_attention(bundle.unet, policy.attention)
    set_attention(bundle.vae, policy.attention)
    if bundle.placement is None:
        networks = {"unet": bundle.unet, "text_encoder": bundle.text_encoder, "vae": bundle.vae}
        bundle.placement = Placement(networks, bundle.device)
    bundle.placement.set_mode(policy.offload if policy.can_offload and policy.offload != "auto" else "none")


def free_device_bytes(device: torch.device) -> int | None:
    """Memory the device can still give: on CUDA its free memory plus what PyTorch holds cached but
    unused; on the CPU the system's available memory (Linux); None where it cannot be asked."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        try:
            meminfo = Path("/proc/meminfo").read_text()
        except OSError:
            return None
        for line in meminfo.splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def policy_from_settings(device: torch.device, dtypes: ComponentDtypes, *, attention: str = "sdpa",
                         attention_slice_size: int = 0, offload: str = "none", vae_tiling: str = "auto",
                         vae_tile_size: int = 512, channels_last: bool = False, compile: bool = False) -> MemoryPolicy:
    """The policy from Settings-style values (slice size 0 = auto; the VAE tile size in pixels)."""
    if attention not in BACKENDS:
        raise ValueError(f"attention {attention!r}: expected one of {', '.join(BACKENDS)}")
    tile = max(8, vae_tile_size // 8)
    return MemoryPolicy(
        device=device, dtypes=dtypes, attention=AttentionConfig(attention, attention_slice_size or None),
        offload=offload, vae_tiling=vae_tiling, vae_tile=tile, vae_tile_overlap=tile // 4,
        channels_last=channels_last, compile=compile,
    )
