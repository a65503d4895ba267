"""The model store: the one place a loaded checkpoint lives, so switching models frees the old one."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

import torch

from webui.errors import WebUIError

from .checkpoint_file import open_checkpoint
from .loading import ModelBundle, inspect_checkpoint, load_checkpoint
from .specs import Prediction


@dataclass(frozen=True)
class _Request:
    path: Path
    vae_path: Path | None
    prediction: Prediction | None
    use_ema: bool


class ModelStore:
    """Holds at most one loaded bundle.

    Switching releases the previous bundle BEFORE loading the next one, so peak memory stays at one
    model (two SDXL-sized models do not fit small GPUs). Files are checked from their headers first,
    so most bad files fail while the previous model is still loaded; if a load fails later, the
    previous model is loaded again and stays usable.
    """

    def __init__(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        self.dtype = dtype
        self.device = torch.device(device)
        self._bundle: ModelBundle | None = None
        self._request: _Request | None = None

    @property
    def current(self) -> ModelBundle | None:
        return self._bundle

    def load(
        self,
        path: str | Path,
        *,
        vae_path: str | Path | None = None,
        prediction: Prediction | None = None,
        use_ema: bool = False,
    ) -> ModelBundle:
        """The bundle for this checkpoint (and VAE), reusing the loaded one when it is the same."""
        request = _Request(Path(path).resolve(), Path(vae_path).resolve() if vae_path else None, prediction, use_ema)
        if self._bundle is not None and request == self._request:
            return self._bundle
        inspect_checkpoint(request.path)  # raises for a bad checkpoint while the current model stays loaded
        if request.vae_path is not None:
            open_checkpoint(request.vae_path).close()
        previous = self._request
        self.unload()
        try:
            self._bundle = self._load(request)
        except WebUIError:
            if previous is not None:
                self._bundle = self._load(previous)
                self._request = previous
            raise
        self._request = request
        return self._bundle

    def unload(self) -> None:
        """Drop the loaded bundle and return its memory."""
        self._bundle = None
        self._request = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _load(self, request: _Request) -> ModelBundle:
        return load_checkpoint(
            request.path,
            vae_path=request.vae_path,
            dtype=self.dtype,
            device=self.device,
            prediction=request.prediction,
            use_ema=request.use_ema,
        )
