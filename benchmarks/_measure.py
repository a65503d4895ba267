"""Timing, memory and FLOP measurements shared by the benchmarks (see shared/reference/benchmarking.md).

Wall time alone means little on a shared 2-core machine, so every sample also carries the process's
CPU-seconds, and comparisons are made as per-pair ratios ours/reference measured in one process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

GIB = 1024**3


def set_up_torch() -> int:
    """Inference settings every benchmark uses; returns the number of intra-op threads."""
    torch.set_flush_denormal(True)  # denormals are ~100x slower on x86 and change nothing visible
    torch.set_grad_enabled(False)
    return torch.get_num_threads()


# --- CPU time and memory --------------------------------------------------------------------------


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def max_rss_bytes() -> int:
    """`ru_maxrss`: the process's peak resident size since it started (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_status() -> dict[str, int]:
    """VmRSS, VmHWM (peak since the last reset), RssAnon and RssFile of this process, in bytes."""
    wanted = {"VmRSS", "VmHWM", "RssAnon", "RssFile"}
    out = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in wanted:
                out[name] = int(value.split()[0]) * 1024
    return out


def release_free_memory() -> None:
    """Give the C heap's free pages back to the OS (glibc `malloc_trim`), so that the next peak
    measures new allocations instead of reusing memory that an earlier call left resident."""
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class Sample:
    wall_s: float
    cpu_s: float
    rss_before: int  # resident bytes when the call started (models, inputs), after `release_free_memory`
    peak_rss: int  # VmHWM during the call; peak_rss - rss_before is the call's own peak (activations)

    @property
    def extra_peak(self) -> int:
        return self.peak_rss - self.rss_before


def measure(fn: Callable[[], Any]) -> tuple[Any, Sample]:
    """Run `fn` once and return its result with wall time, CPU-seconds and peak RSS."""
    release_free_memory()
    reset_peak_rss()
    rss_before = memory_status()["VmRSS"]
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    result = fn()
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    return result, Sample(wall, cpu, rss_before, memory_status()["VmHWM"])


def spread(values: Sequence[float]) -> dict[str, float]:
    """min / median / max of a list of numbers."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def ratio_spread(ours: Sequence[float], ref: Sequence[float]) -> dict[str, float]:
    """min / median / max of the per-pair ratios ours[i] / ref[i]."""
    if len(ours) != len(ref) or not ours:
        raise ValueError(f"need equally many samples, got {len(ours)} and {len(ref)}")
    return spread([a / b for a, b in zip(ours, ref)])


def summarize(samples: Sequence[Sample]) -> dict[str, Any]:
    """Medians of a list of samples, plus the raw samples for the JSON line."""
    return {
        "wall_s": spread([s.wall_s for s in samples]),
        "cpu_s_median": statistics.median(s.cpu_s for s in samples),
        "peak_rss_max": max(s.peak_rss for s in samples),
        "extra_peak_rss_max": max(s.extra_peak for s in samples),
        "samples": [asdict(s) for s in samples],
    }


# --- FLOPs ------------------------------------------------------------------------------------------


def register_cpu_sdpa_flops() -> None:
    """Teach FlopCounterMode the CPU flash-attention op, which torch has no formula for."""
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None:
        return
    from torch.utils.flop_counter import flop_registry

    if op in flop_registry:
        return

    @register_flop_formula(op)
    def _cpu_flash_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of `fn` (a multiply-add counts 2); run it on meta tensors so that nothing is computed."""
    register_cpu_sdpa_flops()
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_peak_gflops(n: int = 4096, repeats: int = 5, dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Achieved GFLOP/s of an n x n matmul: this machine's practical peak (best and median of `repeats`)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)  # warm-up: thread pool, page faults
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        rates.append(2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return {"best": max(rates), "median": statistics.median(rates)}


def profile_top_ops(fn: Callable[[], Any], rows: int = 12) -> str:
    """The ops of one call of `fn` that took the most CPU time themselves, as a table."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


# --- machine, accuracy and formatting ------------------------------------------------------------------------


def rel_max_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max|ours - ref| / max|ref|, in fp32."""
    if ours.shape != ref.shape:
        raise ValueError(f"shapes differ: {tuple(ours.shape)} vs {tuple(ref.shape)}")
    return ((ours.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


def gib(n_bytes: float) -> str:
    return f"{n_bytes / GIB:.2f} GiB"


def machine_info() -> dict[str, Any]:
    """CPU model and the flags that decide bf16 speed, thread count, library versions, load average."""
    import diffusers
    import transformers

    first_cpu = open("/proc/cpuinfo", encoding="utf-8").read().split("\n\n")[0]
    info = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first_cpu.splitlines())}
    # Without avx512_bf16 / amx_bf16, bf16 matmuls are emulated and several times slower than fp32.
    flags = [f for f in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in info.get("flags", "").split()]
    return {
        "cpu": info.get("model name", "?"), "cpu_flags": flags, "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
        "diffusers": diffusers.__version__, "transformers": transformers.__version__, "loadavg_start": os.getloadavg(),
    }


def read_checkpoint(path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, memory-mapped; in another dtype, converted one tensor at a time."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {k: (t.to(dtype) if t.is_floating_point() else t) for k in f.keys() for t in [f.get_tensor(k)]}


def report(res: dict[str, Any], started: float, summary: Callable[[dict], str]) -> None:
    """Close a benchmark's result (end load average, wall time) and print it: one JSON line, then the summary."""
    res["machine"]["loadavg_end"] = os.getloadavg()
    res["wall_s"] = time.perf_counter() - started
    print(json.dumps(res))
    print(summary(res))
    print(f"total wall time {res['wall_s']:.0f} s")
