"""What a pipeline runs with (model, progress, cancel, where to save) and what it returns."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from webui.errors import Interrupted, Skipped

from ..memory.devices import ComponentDtypes
from ..memory.policy import MemoryPolicy
from ..models.loading import ModelBundle
from ..models.prompt_tokens import Embedding
from ..request import GenerationRequest
from .hooks import PipelineHooks


class CancelToken:
    """Checked every sampling step: `interrupt()` ends the job, `skip()` ends the current batch only."""

    def __init__(self) -> None:
        self._interrupt = threading.Event()
        self._skip = threading.Event()

    def interrupt(self) -> None:
        self._interrupt.set()

    def skip(self) -> None:
        self._skip.set()

    @property
    def interrupted(self) -> bool:
        return self._interrupt.is_set()

    def check(self) -> None:
        if self._interrupt.is_set():
            raise Interrupted("interrupted")
        if self._skip.is_set():
            self._skip.clear()
            raise Skipped("skipped")


@dataclass
class ProgressEvent:
    """One sampling step done. `preview()` renders the current estimate cheaply, only when called."""

    step: int  # 1-based, within the current sampling pass
    total_steps: int
    batch_index: int  # 0-based batch number
    batch_count: int
    phase: str  # "sampling" or "hires"
    latents: torch.Tensor  # the current x0 estimate, (B, 4, h, w)
    preview: Callable[[], list[Image.Image]]


@dataclass
class PipelineContext:
    bundle: ModelBundle
    model_name: str = ""  # shown in infotexts; defaults to the checkpoint's file name
    on_progress: Callable[[ProgressEvent], None] | None = None
    cancel: CancelToken = field(default_factory=CancelToken)
    output_dir: Path | None = None  # None: nothing is written to disk
    version: str = "webui"
    # The loaded model that request.refiner_checkpoint names (the caller loads it, e.g. the SDXL refiner);
    # the pipelines use it only when the request asks for a refiner.
    refiner: ModelBundle | None = None
    hooks: PipelineHooks = field(default_factory=PipelineHooks)  # what extensions add to this job
    embeddings: tuple[Embedding, ...] = ()  # textual-inversion embeddings usable in prompts by name
    # The request as the user sent it, before extensions rewrote it: its prompts go into the infotext.
    original_request: GenerationRequest | None = None
    # How this job uses memory (VAE tiling, attention, offload); default: the bundle as loaded, tiling on demand.
    memory: MemoryPolicy | None = None
    # Depth models (and depth-to-image) without a depth map: image -> (1, h, w) relative inverse depth
    # (larger = nearer), e.g. a `models.depth_estimator.DepthEstimator`; None: a depth map must be given.
    depth_estimator: Callable[[Image.Image], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if not self.model_name:
            self.model_name = self.bundle.path.stem
        if self.memory is None:
            b = self.bundle
            self.memory = MemoryPolicy(device=b.device, dtypes=ComponentDtypes(b.dtype, b.text_encoder.dtype,
                                                                               b.vae.dtype))


@dataclass
class GenerationResult:
    request: GenerationRequest
    images: list[Image.Image]
    seeds: list[int]
    subseeds: list[int]
    infotexts: list[str]
    paths: list[Path]
    interrupted: bool = False
    notices: list[str] = field(default_factory=list)  # for the user, e.g. an extension that failed
