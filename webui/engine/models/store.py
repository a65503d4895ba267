"""The model store: the one place a loaded checkpoint lives, so switching models frees the old one."""

from __future__ import annotations

import gc
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from webui.errors import WebUIError

from ..memory.devices import ComponentDtypes
from ..memory.estimate import plan_offload
from ..memory.policy import MemoryPolicy, apply_policy
from .checkpoint_file import open_checkpoint
from .loading import ModelBundle, inspect_checkpoint, load_checkpoint
from .specs import Prediction


@dataclass(frozen=True)
class _Request:
    path: Path
    vae_path: Path | None
    prediction: Prediction | None
    use_ema: bool
    # What loading fixes: changing one of these loads the model again (the rest of the policy applies live).
    device: torch.device
    dtypes: ComponentDtypes
    channels_last: bool
    compile: bool


class ModelStore:
    """Holds at most one loaded bundle.

    Switching releases the previous bundle BEFORE loading the next one, so peak memory stays at one
    model (two SDXL-sized models do not fit small GPUs). Files are checked from their headers first,
    so most bad files fail while the previous model is still loaded; if a load fails later, the
    previous model is loaded again and stays usable.

    Each load takes the memory policy of the job (default: the store's); the networks' dtypes,
    device, channels-last and compile are fixed at load (a change reloads), the attention backend
    and offload mode are applied to the loaded bundle every time.
    """

    def __init__(self, policy: MemoryPolicy | None = None) -> None:
        self.policy = policy or MemoryPolicy()
        self._bundle: ModelBundle | None = None
        self._request: _Request | None = None
        self._offload: str = "none"  # the loaded bundle's offload mode, "auto" decided at load

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
        policy: MemoryPolicy | None = None,
    ) -> ModelBundle:
        """The bundle for this checkpoint (and VAE) under `policy`, reusing the loaded one when it is the same."""
        policy = policy or self.policy
        request = _Request(Path(path).resolve(), Path(vae_path).resolve() if vae_path else None, prediction, use_ema,
                           policy.device, policy.dtypes, policy.channels_last, policy.compile)
        if self._bundle is not None and request == self._request:
            self._place(policy)
            return self._bundle
        inspect_checkpoint(request.path)  # raises for a bad checkpoint while the current model stays loaded
        if request.vae_path is not None:
            open_checkpoint(request.vae_path).close()
        previous = self._request
        self.unload()
        try:
            self._bundle = self._load(request, policy)
        except WebUIError:
            if previous is not None:
                self._bundle = self._load(previous, self.policy)
                self._request = previous
                self._place(self.policy)
            raise
        self._request = request
        # "auto": decided now for a generation at the model's native size, so that loading never moves
        # more onto the device than fits; each job then plans again for its own size.
        native = 1024 if self._bundle.spec.is_sdxl else 512
        self._offload = plan_offload(self._bundle, policy, native, native, 1).offload
        self._place(policy)
        return self._bundle

    def _place(self, policy: MemoryPolicy) -> None:
        apply_policy(self._bundle, replace(policy, offload=self._offload if policy.offload == "auto" else policy.offload))

    def unload(self) -> None:
        """Drop the loaded bundle and return its memory."""
        self._bundle = None
        self._request = None
        self._offload = "none"
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _load(self, request: _Request, policy: MemoryPolicy) -> ModelBundle:
        # With offloading (or "auto", until it is resolved) the weights arrive in CPU memory first, so
        # that a model bigger than the device's memory still loads.
        offloaded = policy.can_offload and policy.offload != "none"
        bundle = load_checkpoint(
            request.path,
            vae_path=request.vae_path,
            dtype=request.dtypes,
            device=torch.device("cpu") if offloaded else request.device,
            prediction=request.prediction,
            use_ema=request.use_ema,
        )
        bundle.device = request.device
        if request.channels_last:
            bundle.unet.to(memory_format=torch.channels_last)
        if request.compile:
            bundle.unet.compile()
        return bundle
