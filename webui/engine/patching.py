"""Weight patches as data: apply them for the length of a `with` block, then restore the base weights exactly.

LoRA and its relatives turn a file into `WeightPatch`es; the pipeline applies them around sampling:

    roots = model_roots(bundle)                       # {"unet": ..., "text_encoder": ...}
    with patched(roots, patches):
        ...                                           # encode the prompt, sample
    # every patched parameter holds its original tensor again, bit for bit

Restoring swaps each parameter's original tensor back in rather than subtracting the delta, so it
is exact for every dtype and costs nothing. The price is memory: while patched, a patched
parameter's original and its patched copy both exist (only for the targets the patches name).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from webui.errors import WebUIError


@dataclass(frozen=True)
class WeightPatch:
    """Add `strength * delta()` to the parameter at `target`."""

    target: str  # parameter path from a root mapping, e.g. "unet.input_blocks.1.1.proj_in.weight"
    # The float32 delta, same shape as the target weight; called only when the patch is applied.
    delta: Callable[[], torch.Tensor]
    strength: float = 1.0
    source: str = ""  # who made it, for messages, e.g. "lora:my_style"


class PatchError(WebUIError):
    """A patch names a parameter that does not exist, or its delta does not fit the parameter."""

    def __init__(self, source: str, target: str, problem: str) -> None:
        self.source = source
        self.target = target
        self.problem = problem
        who = f"{source}: " if source else ""
        super().__init__(f"{who}cannot patch '{target}': {problem}")


def model_roots(bundle: object) -> dict[str, nn.Module]:
    """The root mapping patch targets are named from: a ModelBundle's "unet" and "text_encoder"."""
    return {"unet": bundle.unet, "text_encoder": bundle.text_encoder}  # type: ignore[attr-defined]


def resolve_parameter(modules: Mapping[str, nn.Module], target: str, source: str = "") -> nn.Parameter:
    """The parameter `target` names ("<root>.<path in that module>"); PatchError when there is none."""
    root, _, path = target.partition(".")
    if root not in modules:
        raise PatchError(source, target, f"no model part '{root}' (have: {', '.join(sorted(modules))})")
    module_path, _, name = path.rpartition(".")
    try:
        module = modules[root].get_submodule(module_path) if module_path else modules[root]
    except AttributeError:
        raise PatchError(source, target, f"the {root} has no layer '{module_path}'") from None
    param = module._parameters.get(name) if name else None
    if param is None:
        raise PatchError(source, target, f"the layer '{module_path or root}' has no parameter '{name}'")
    return param


@contextmanager
def patched(modules: Mapping[str, nn.Module], patches: Sequence[WeightPatch]) -> Iterator[None]:
    """Within the block, each target holds W + sum(strength * delta); on exit (also on errors), W exactly.

    Every target is resolved before anything changes. A delta of the wrong shape (known only once
    computed) raises PatchError after the targets patched so far are put back, so an error never
    leaves a weight modified. Works inside and outside torch.inference_mode.
    """
    groups: dict[str, list[WeightPatch]] = {}
    for patch in patches:
        if patch.strength != 0:
            groups.setdefault(patch.target, []).append(patch)
    params = {target: resolve_parameter(modules, target, group[0].source) for target, group in groups.items()}

    originals: list[tuple[nn.Parameter, torch.Tensor]] = []
    try:
        for target, group in groups.items():
            param = params[target]
            # A parameter made in inference mode only takes inference tensors, and a normal one only
            # normal tensors; match the parameter so the swap works in either mode.
            with torch.inference_mode(param.is_inference()), torch.no_grad():
                new = _patched_weight(param, target, group)
                originals.append((param, param.data))
                param.data = new
        yield
    finally:
        for param, original in reversed(originals):
            with torch.inference_mode(param.is_inference()), torch.no_grad():
                param.data = original


def _patched_weight(param: nn.Parameter, target: str, group: list[WeightPatch]) -> torch.Tensor:
    """W + sum(strength * delta), summed in float32 on the weight's device, in the weight's dtype."""
    total = param.detach().to(dtype=torch.float32, copy=True)
    for patch in group:
        delta = patch.delta()
        if tuple(delta.shape) != tuple(param.shape):
            raise PatchError(
                patch.source, target, f"the change has shape {tuple(delta.shape)} but the weight is {tuple(param.shape)}"
            )
        total += patch.strength * delta.to(device=param.device, dtype=torch.float32)
    return total.to(param.dtype)
