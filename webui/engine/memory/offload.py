"""Where a loaded model's networks sit between uses: the offload modes.

- "none": every network stays on the compute device.
- "model": only the network in use sits on the device; the others wait in CPU memory. A network is
  brought over when any of its layers is about to run, and the one there before goes back.
- "sequential": the weights stay in CPU memory and each layer visits the device only while it runs
  (the smallest device memory, and the slowest: every step moves every weight).

Both work through forward pre-hooks on the layers that hold weights (leaf modules), so they follow
whatever code calls the networks (`vae.decode`, an extension's wrapper, a ControlNet) without any
pipeline knowing. The hooks also move the layer's tensor inputs to the device, so inputs made next
to offloaded weights (e.g. token ids) still meet them there. On a CPU-only machine the moves are no-ops
but the bookkeeping runs the same, which is what the tests check.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

CPU = torch.device("cpu")
PLACEMENTS = ("none", "model", "sequential")


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device) if value.device != device else value
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def _weighted_leaves(module: nn.Module) -> list[nn.Module]:
    """The modules that hold weights directly (parameters or buffers of their own)."""
    return [m for m in module.modules()
            if any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))]


class Placement:
    """Moves a model's networks (name -> module) between the compute device and the CPU by offload mode."""

    def __init__(self, networks: Mapping[str, nn.Module], device: torch.device) -> None:
        self.networks = dict(networks)
        self.device = torch.device(device)
        self.mode: str | None = None  # unknown until the first set_mode, which then moves every network
        self.resident: str | None = None  # "model" mode: the network now on the device
        self.moves = 0  # weight transfers so far (a layer or a network at a time), for tests and logs
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def set_mode(self, mode: str) -> None:
        """Switch to `mode` ("none", "model" or "sequential"); a no-op when it is the current one."""
        if mode not in PLACEMENTS:
            raise ValueError(f"offload mode {mode!r}: expected none, model or sequential")
        if mode == self.mode:
            return
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.resident = None
        home = self.device if mode == "none" else CPU
        for module in self.networks.values():
            module.to(home)
        for name, module in self.networks.items():
            for leaf in _weighted_leaves(module):
                if mode == "model":
                    self._handles.append(leaf.register_forward_pre_hook(self._model_hook(name), with_kwargs=True))
                elif mode == "sequential":
                    self._handles.append(leaf.register_forward_pre_hook(self._arrive, with_kwargs=True))
                    self._handles.append(leaf.register_forward_hook(self._leave))
        self.mode = mode
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _model_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if self.resident != name:
                if self.resident is not None:
                    self.networks[self.resident].to(CPU)
                self.networks[name].to(self.device)
                self.resident = name
                self.moves += 1
            return _to(args, self.device), _to(kwargs, self.device)

        return hook

    def _arrive(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        module.to(self.device)
        self.moves += 1
        return _to(args, self.device), _to(kwargs, self.device)

    def _leave(self, module: nn.Module, args: tuple, output: Any) -> None:
        module.to(CPU)

    def on_device(self) -> list[str]:
        """The networks whose weights are on the compute device now (all of them in "none" mode)."""
        if self.mode in ("none", None):
            return list(self.networks)
        return [self.resident] if self.resident is not None else []
