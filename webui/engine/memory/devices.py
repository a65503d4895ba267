"""Choosing the device and compute dtype from what the hardware does well."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def choose_device(name: str = "auto") -> torch.device:
    """"auto": the first CUDA GPU, else Apple's MPS, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device {name!r} is not a device name (auto, cpu, cuda, cuda:N, mps)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: no CUDA GPU is available to this PyTorch build")
    return device


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AMX or AVX512-BF16): there bf16 is several times faster
    than fp32; elsewhere bf16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def choose_dtype(precision: str, device: torch.device) -> torch.dtype:
    """"auto": fp16 on GPUs, bf16 on CPUs with native bf16, fp32 otherwise."""
    if precision != "auto":
        return PRECISIONS[precision]
    if device.type in ("cuda", "mps"):
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


@dataclass(frozen=True)
class ComponentDtypes:
    """The dtype each network is loaded and run in."""

    unet: torch.dtype = torch.float32
    text_encoder: torch.dtype = torch.float32
    vae: torch.dtype = torch.float32

    @classmethod
    def all(cls, dtype: torch.dtype) -> ComponentDtypes:
        return cls(dtype, dtype, dtype)


def choose_dtypes(device: torch.device, precision: str = "auto", unet: str = "auto", text_encoder: str = "auto",
                  vae: str = "auto") -> ComponentDtypes:
    """Each component's dtype: its own setting when not "auto", else the overall `precision`'s choice.

    On CPUs without native bf16 (see `cpu_has_native_bf16`) "auto" is fp32 everywhere: bf16 would only
    save memory there, at 3-4x the time. The fp16 VAE's overflow is caught at decode (fp32 retry).
    """
    base = choose_dtype(precision, device)
    return ComponentDtypes(*(base if name == "auto" else PRECISIONS[name] for name in (unet, text_encoder, vae)))
