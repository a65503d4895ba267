"""Choosing the device and compute dtype from what the hardware does well."""

from __future__ import annotations

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
