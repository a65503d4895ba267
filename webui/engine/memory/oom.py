"""Out-of-memory as an expected event: recognise it, say where it happened, free what it left behind.

A stage (`out_of_memory_at`) turns the framework's out-of-memory error into `OutOfMemory`, which
names the stage, the size and batch, and what to change. Whoever catches it to retry calls
`detach` first: an exception keeps the failed attempt's frames, and the tensors they hold, alive
through its traceback and through the original error it was raised while handling (`__context__`).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from webui.errors import WebUIError

# How the allocators word it: CUDA/MPS raise torch.OutOfMemoryError; the CPU allocator a RuntimeError.
_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory")


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _MESSAGES)


class OutOfMemory(WebUIError):
    """The device ran out of memory at `stage` ("VAE decode", ...); `detail` is the size and batch."""

    def __init__(self, stage: str, detail: str, advice: str) -> None:
        self.stage, self.detail, self.advice = stage, detail, advice
        super().__init__(f"out of memory at {stage} ({detail}): {advice}")


# What a user can change, per stage, when every automatic fallback has failed too.
ADVICE = {
    "text encoding": "use a shorter prompt, or set Offload to model in Settings",
    "sampling": "lower the size or batch size, or set Offload to model or sequential in Settings",
    "hires sampling": "lower the hires scale or the batch size, or set Offload to sequential in Settings",
    "hires upscale": "lower the hires scale, or use a latent upscaler",
    "VAE decode": "enable tiled VAE (Settings) with a smaller tile size, or lower the size or batch size",
    "VAE encode": "enable tiled VAE (Settings) with a smaller tile size, or lower the input image's size",
}


def size_detail(width: int, height: int, batch: int) -> str:
    return f"{width}x{height}, batch {batch}"


@contextmanager
def out_of_memory_at(stage: str, detail: str) -> Iterator[None]:
    """Run the block; if it runs out of memory, raise `OutOfMemory` (the catcher frees, after `detach`)."""
    failed = False
    try:
        yield
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        failed = True
    if failed:  # outside the except block (the original error still rides along as __context__)
        raise OutOfMemory(stage, detail, ADVICE.get(stage, "lower the size or batch size"))


def detach(error: OutOfMemory) -> OutOfMemory:
    """`error` without its traceback and chained errors, so the failed attempt's memory can be freed."""
    error.__traceback__ = error.__context__ = error.__cause__ = None
    return error


def free_memory() -> None:
    """Collect unreachable tensors and return the CUDA cache to the device."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
