"""The depth estimator: a DPT (MiDaS) model through `transformers`, as SD 2 depth models were trained with.

`DepthEstimator.from_folder(folder)` loads a model saved in the Hugging Face layout (`config.json` and
`model.safetensors`, optionally `preprocessor_config.json`) from `models/depth/<name>/`;
`DepthEstimator.download(hub_id, into)` fetches one from the Hugging Face hub (when online) and saves it
there. Only safetensors weights are read, never pickles, and no remote code runs.

`estimator(image)` gives the model's raw relative inverse depth ((1, h, w): larger = nearer), which the
pipelines normalise (`steps.depth_conditioning`); `estimator.depth_image(image)` gives it as a picture
(white = near) at the image's size, for ControlNet depth maps and previews. `DepthEstimatorStore` is the
app's one estimator, loaded (or downloaded) on first use.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from webui.errors import ModelLoadError, RequestError

log = logging.getLogger(__name__)
DEFAULT_HUB_ID = "Intel/dpt-hybrid-midas"  # the MiDaS model (DPT-Hybrid) SD 2 depth was trained with


def is_model_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


class DepthEstimator:
    def __init__(self, model: torch.nn.Module, processor, device: torch.device | str = "cpu",
                 name: str = "") -> None:
        self.model = model.eval().requires_grad_(False).to(device)
        self.processor = processor
        self.device = torch.device(device)
        self.name = name

    @classmethod
    def from_folder(cls, folder: str | Path, device: torch.device | str = "cpu") -> DepthEstimator:
        from transformers import DPTForDepthEstimation, DPTImageProcessorPil

        folder = Path(folder)
        if not is_model_folder(folder):
            raise ModelLoadError(folder, "not a depth estimator: expected a folder with config.json and "
                                         "model.safetensors (a DPT model saved by transformers)")
        try:
            model = DPTForDepthEstimation.from_pretrained(folder, use_safetensors=True, local_files_only=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(folder, f"the depth estimator cannot be loaded ({exc})") from exc
        if (folder / "preprocessor_config.json").is_file():
            processor = DPTImageProcessorPil.from_pretrained(folder, local_files_only=True)
        else:  # SD 2 depth's: 384 x 384, bicubic, normalised to [-1, 1]
            processor = DPTImageProcessorPil()
        return cls(model, processor, device, folder.name)

    @classmethod
    def download(cls, hub_id: str, into: Path, device: torch.device | str = "cpu") -> DepthEstimator:
        """Fetch `hub_id` from the Hugging Face hub and save it as `into/<last part of the id>`."""
        from transformers import DPTForDepthEstimation, DPTImageProcessorPil

        folder = Path(into) / hub_id.rsplit("/", 1)[-1]
        try:
            model = DPTForDepthEstimation.from_pretrained(hub_id, use_safetensors=True)
            processor = DPTImageProcessorPil.from_pretrained(hub_id)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(hub_id, f"the depth estimator could not be downloaded ({exc}); offline, put a DPT "
                                         f"model folder (config.json, model.safetensors) in {into}") from exc
        model.save_pretrained(folder, safe_serialization=True)
        processor.save_pretrained(folder)
        return cls(model, processor, device, folder.name)

    @torch.inference_mode()
    def __call__(self, image: Image.Image) -> torch.Tensor:
        """(1, h, w) relative inverse depth of `image` at the model's resolution (larger = nearer)."""
        pixels = self.processor(images=image.convert("RGB"), return_tensors="pt").pixel_values
        dtype = next(self.model.parameters()).dtype
        return self.model(pixel_values=pixels.to(self.device, dtype)).predicted_depth.float()

    def depth_image(self, image: Image.Image) -> Image.Image:
        """The depth of `image` as an "L" picture of its size, stretched to 0..255 (white = near)."""
        depth = F.interpolate(self(image)[:, None], size=(image.height, image.width), mode="bicubic",
                              align_corners=False)[0, 0]
        low, high = depth.min(), depth.max()
        scaled = (depth - low) / (high - low) if high > low else torch.zeros_like(depth)
        return Image.fromarray((scaled.clamp(0, 1) * 255).round().byte().cpu().numpy().astype(np.uint8), "L")


class DepthEstimatorStore:
    """The app's depth estimator, loaded on first use and kept: the first model folder that `folders()`
    lists (models/depth), or, when there is none and `download_into()` gives a folder, `DEFAULT_HUB_ID`
    downloaded there (a failed download is tried again after `RETRY_SECONDS`, not at every job)."""

    RETRY_SECONDS = 600.0

    def __init__(self, folders: Callable[[], list[Path]], download_into: Callable[[], Path | None] = lambda: None,
                 device: torch.device | str = "cpu") -> None:
        self.folders, self.download_into, self.device = folders, download_into, torch.device(device)
        self._estimator: DepthEstimator | None = None
        self._folder: Path | None = None
        self._failed_at = -float("inf")
        self._lock = threading.Lock()  # jobs and UI previews may ask at the same time

    def get(self) -> DepthEstimator | None:
        with self._lock:
            folders = self.folders()
            if folders:
                if self._estimator is None or self._folder != folders[0]:
                    self._estimator, self._folder = DepthEstimator.from_folder(folders[0], self.device), folders[0]
                return self._estimator
            target = self.download_into()
            if self._estimator is None and target is not None and time.monotonic() - self._failed_at > self.RETRY_SECONDS:
                try:
                    self._estimator = DepthEstimator.download(DEFAULT_HUB_ID, target, self.device)
                except ModelLoadError as exc:
                    log.warning("%s", exc)
                    self._failed_at = time.monotonic()
            return self._estimator

    def _require(self) -> DepthEstimator:
        estimator = self.get()
        if estimator is None:
            raise RequestError("depth_map", None, "a depth map: no depth estimator is installed (put a DPT model "
                               f"folder such as {DEFAULT_HUB_ID} in models/depth, or let the app download it once "
                               "online, or upload a depth map)")
        return estimator

    def estimate(self, image: Image.Image) -> torch.Tensor:
        """The raw depth of `image` (see `DepthEstimator.__call__`); RequestError when there is no estimator."""
        estimator = self._require()
        with self._lock:
            return estimator(image)

    def depth_image(self, image: Image.Image) -> Image.Image:
        """The depth of `image` as a picture (see `DepthEstimator.depth_image`)."""
        estimator = self._require()
        with self._lock:
            return estimator.depth_image(image)
