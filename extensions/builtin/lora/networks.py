"""LoRA-family files -> WeightPatches for a loaded model.

    state_dict = read_lora_file("models/loras/my_style.safetensors")
    result = lora_patches(state_dict, bundle, unet_strength=0.8, te_strength=0.8, name="my_style")
    with patched(model_roots(bundle), result.patches):
        ...

Each layer's change (delta) is rebuilt from its factors as the tools that train them define it
(kohya-ss sd-scripts, LyCORIS; the same rules A1111 applies), times a scale:

    LoRA / LoCon   up @ down (conv: flattened, then reshaped), Tucker form with `lora_mid`;
                   scale alpha / rank, rank = down.shape[0] (no alpha: 1)
    LoHa           (w1a @ w1b) * (w2a @ w2b) (Tucker form with hada_t1/t2); scale alpha / w1b.shape[0]
    LoKr           kron(w1, w2), each factor whole or as a @ b (w2 Tucker with lokr_t2);
                   scale alpha / rank only when a factor is decomposed, else 1
    full           `diff` (and `diff_b` for the bias), as stored
"""

from __future__ import annotations

import math
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from webui.engine.patching import WeightPatch, model_roots
from webui.errors import ModelLoadError

from .keymap import IGNORED, LayerTable

# File key suffix -> the factor it holds. diffusers/PEFT names are mapped onto kohya's.
_SUFFIXES = {
    "lora_down.weight": "down", "lora_up.weight": "up", "lora_mid.weight": "mid",
    "lora_A.weight": "down", "lora_B.weight": "up",
    "lora.down.weight": "down", "lora.up.weight": "up",
    "lora_linear_layer.down.weight": "down", "lora_linear_layer.up.weight": "up",
    "alpha": "alpha", "dora_scale": "dora_scale",
    "hada_w1_a": "hada_w1_a", "hada_w1_b": "hada_w1_b", "hada_w2_a": "hada_w2_a", "hada_w2_b": "hada_w2_b",
    "hada_t1": "hada_t1", "hada_t2": "hada_t2",
    "lokr_w1": "lokr_w1", "lokr_w1_a": "lokr_w1_a", "lokr_w1_b": "lokr_w1_b",
    "lokr_w2": "lokr_w2", "lokr_w2_a": "lokr_w2_a", "lokr_w2_b": "lokr_w2_b", "lokr_t2": "lokr_t2",
    "diff": "diff", "diff_b": "diff_b",
    # LyCORIS kinds recognised but not applied (OFT, IA3, norm, GLoRA): reported, not guessed at.
    "oft_blocks": "oft", "oft_diag": "oft", "on_input": "ia3", "w_norm": "norm", "b_norm": "norm",
    "a1.weight": "glora", "a2.weight": "glora", "b1.weight": "glora", "b2.weight": "glora",
}
_SUFFIX_ORDER = sorted(_SUFFIXES, key=len, reverse=True)  # "lokr_w1_a" before "lokr_w1"
# Older diffusers files: `attn1.processor.to_q_lora.down.weight` means `attn1.to_q.lora.down.weight`.
_PROCESSOR_KEY = re.compile(r"\.processor\.(to_[qkv]|to_out)_lora\.(down|up)\.weight$")
# More than this share of a file's layers missing or misfitting: it was made for another base model.
_FOREIGN_SHARE = 0.5
_CONTEXT_WIDTHS = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL", 1280: "the SDXL refiner"}


@dataclass
class LoraResult:
    patches: list[WeightPatch] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    matched: int = 0  # layers of the model the file changes
    unmatched: list[str] = field(default_factory=list)  # file layer keys with no layer, or one of another shape


def read_lora_file(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a .safetensors file, or of a .pt/.ckpt file read without running pickled code."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            tensors: object = load_file(str(path), device="cpu")
        elif suffix in (".pt", ".ckpt", ".pth", ".bin"):
            tensors = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(tensors, dict) and isinstance(tensors.get("state_dict"), dict):
                tensors = tensors["state_dict"]
        else:
            raise ModelLoadError(path, "not a LoRA file: expected .safetensors (or .pt / .ckpt)")
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError, SafetensorError) as exc:
        raise ModelLoadError(path, f"the file cannot be read as a LoRA ({exc})") from exc
    if not isinstance(tensors, dict):
        raise ModelLoadError(path, "the file holds no tensors by name (not a LoRA file?)")
    return {k: v for k, v in tensors.items() if isinstance(k, str) and isinstance(v, Tensor)}


def lora_patches(
    state_dict: Mapping[str, Tensor],
    bundle_or_params: object,
    unet_strength: float,
    te_strength: float,
    name: str,
) -> LoraResult:
    """The patches a LoRA-family file makes to a model (a ModelBundle, or a root mapping as `patched` takes).

    Layers the model does not have, or of another shape, are skipped with a warning; when most of the
    file does not fit (a LoRA for another base model) the whole file is skipped with a warning.
    """
    if isinstance(bundle_or_params, Mapping):
        roots, model_label = dict(bundle_or_params), "this model"
    else:
        roots = model_roots(bundle_or_params)
        spec = getattr(bundle_or_params, "spec", None)
        model_label = f"this {spec.label} model" if spec is not None else "this model"
    table = LayerTable(roots)
    groups = _group_by_layer(state_dict)
    result, source = LoraResult(), f"lora:{name}"
    misfits, unsupported, dora = [], [], []
    for layer_key, factors in groups.items():
        if "dora_scale" in factors:
            dora.append(layer_key)
            continue
        builders = _delta_builders(factors)
        if not builders:
            if any(not part.startswith("?") for part in factors):  # unknown keys alone are no layer at all
                unsupported.append(layer_key)
            continue
        module_path = table.find(layer_key)
        if module_path == IGNORED:
            continue
        if module_path is None:
            result.unmatched.append(layer_key)
            continue
        deltas = _layer_deltas(roots, module_path, builders)
        if deltas is None:
            result.unmatched.append(layer_key)
            misfits.append(layer_key)
            continue
        result.matched += 1
        strength = unet_strength if module_path.startswith("unet.") else te_strength
        if strength != 0:
            result.patches += [WeightPatch(target, delta, float(strength), source) for target, delta in deltas]

    total = result.matched + len(result.unmatched)
    if dora:
        result.warnings.append(f"LoRA '{name}': {_count(dora)} DoRA (dora_scale), which is not supported; "
                               "left out")
    if unsupported:
        result.warnings.append(f"LoRA '{name}': {_count(unsupported)} of a kind this app cannot apply "
                               f"(e.g. {_examples(unsupported, groups)}); left out")
    if total == 0:
        if not dora and not unsupported:
            result.warnings.append(f"LoRA '{name}' has no layers this app recognises (is it a LoRA file?); skipped")
        return result
    if len(result.unmatched) > _FOREIGN_SHARE * total:
        made_for = _guess_base_model(state_dict)
        hint = f"it looks made for {made_for}" if made_for else "made for another base model?"
        result.warnings.append(
            f"LoRA '{name}' does not fit {model_label} ({len(result.unmatched)} of {total} layers are missing or "
            f"of another shape; {hint}); skipped"
        )
        result.patches = []
    elif result.unmatched:
        what = f"{len(misfits)} of another shape, " if misfits else ""
        result.warnings.append(
            f"LoRA '{name}': {len(result.unmatched)} of {total} layers do not fit {model_label} "
            f"({what}e.g. {', '.join(result.unmatched[:3])}); left out"
        )
    return result


def _group_by_layer(state_dict: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """{layer key: {factor name: tensor}}; keys with no known suffix become a group of their own."""
    groups: dict[str, dict[str, Tensor]] = {}
    for key, tensor in state_dict.items():
        key = _PROCESSOR_KEY.sub(lambda m: f".{'to_out.0' if m[1] == 'to_out' else m[1]}.lora.{m[2]}.weight", key)
        suffix = next((s for s in _SUFFIX_ORDER if key.endswith("." + s)), None)
        if suffix is None:
            layer, part = key.rpartition(".")[0] or key, "?" + key.rpartition(".")[2]
        else:
            layer, part = key[: -len(suffix) - 1], _SUFFIXES[suffix]
        groups.setdefault(layer, {})[part] = tensor
    return groups


Builder = tuple[Callable[[dict[str, Tensor]], Tensor], dict[str, Tensor], str]


def _delta_builders(f: Mapping[str, Tensor]) -> list[Builder]:
    """Per parameter of the layer: (delta function of the factors, the factors with the scale folded in
    as `_scale`, parameter name). Empty for a kind of layer this module cannot apply."""
    alpha = float(f["alpha"].item()) if "alpha" in f else None
    if "down" in f and "up" in f:
        rank = f["down"].shape[0]
        keep = {k: f[k] for k in ("down", "up", "mid") if k in f}
        return [(_lora, _with_scale(keep, alpha / rank if alpha is not None else 1.0), "weight")]
    if all(f"hada_w{i}_{s}" in f for i in (1, 2) for s in "ab"):
        keep = {k: v for k, v in f.items() if k.startswith("hada_")}
        rank = f["hada_w1_b"].shape[0]
        return [(_loha, _with_scale(keep, alpha / rank if alpha is not None else 1.0), "weight")]
    has_w1 = "lokr_w1" in f or ("lokr_w1_a" in f and "lokr_w1_b" in f)
    has_w2 = "lokr_w2" in f or ("lokr_w2_a" in f and "lokr_w2_b" in f)
    if has_w1 and has_w2:
        keep = {k: v for k, v in f.items() if k.startswith("lokr_")}
        # LyCORIS stores alpha even for whole factors, but scales only decomposed ones.
        rank = f["lokr_w2_b"].shape[0] if "lokr_w2_b" in f else f["lokr_w1_b"].shape[0] if "lokr_w1_b" in f else None
        scale = alpha / rank if alpha is not None and rank is not None else 1.0
        return [(_lokr, _with_scale(keep, scale), "weight")]
    full = []  # LyCORIS "full": the difference itself, for the weight and/or the bias
    if "diff" in f:
        full.append((_stored("diff"), _with_scale({"diff": f["diff"]}, 1.0), "weight"))
    if "diff_b" in f:
        full.append((_stored("diff_b"), _with_scale({"diff_b": f["diff_b"]}, 1.0), "bias"))
    return full


def _with_scale(tensors: dict[str, Tensor], scale: float) -> dict[str, Tensor]:
    return {**tensors, "_scale": torch.tensor(scale, dtype=torch.float32)}


def _lora(w: dict[str, Tensor]) -> Tensor:
    up, down = w["up"].flatten(1), w["down"].flatten(1)  # (out, rank), (rank, in * kh * kw)
    if "mid" in w:  # Tucker: a (rank, rank, kh, kw) core between two 1x1 convs
        return torch.einsum("n m k l, i n, m j -> i j k l", w["mid"], up, down)
    # (out, in * kh * kw) -> (out, in, kh, kw) for convs; stays 2-D for linears
    return (up @ down).reshape(w["up"].shape[0], *w["down"].shape[1:])


def _tucker(core: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """LyCORIS's CP/Tucker rebuild: core (r, r, kh, kw), a (r, out), b (r, in) -> (out, in, kh, kw)."""
    return torch.einsum("i j k l, i p, j q -> p q k l", core, a, b)


def _loha(w: dict[str, Tensor]) -> Tensor:
    def half(i: int) -> Tensor:
        a, b = w[f"hada_w{i}_a"], w[f"hada_w{i}_b"]
        if f"hada_t{i}" in w:
            return _tucker(w[f"hada_t{i}"], a, b)
        return a.flatten(1) @ b.flatten(1)  # (out, rank) @ (rank, in * kh * kw)

    return half(1) * half(2)


def _lokr(w: dict[str, Tensor]) -> Tensor:
    w1 = w["lokr_w1"] if "lokr_w1" in w else w["lokr_w1_a"] @ w["lokr_w1_b"]
    if "lokr_w2" in w:
        w2 = w["lokr_w2"]
    elif "lokr_t2" in w:
        w2 = _tucker(w["lokr_t2"], w["lokr_w2_a"], w["lokr_w2_b"])
    else:
        w2 = w["lokr_w2_a"] @ w["lokr_w2_b"]
    if w2.ndim == 4:  # conv: the kernel lives in w2; w1 scales whole (kh, kw) blocks
        w1 = w1[:, :, None, None]
    return torch.kron(w1, w2)  # (o1, i1) x (o2, i2[, kh, kw]) -> (o1 * o2, i1 * i2[, kh, kw])


def _stored(name: str) -> Callable[[dict[str, Tensor]], Tensor]:
    return lambda w: w[name]


def _fitter(
    fn: Callable[[dict[str, Tensor]], Tensor], tensors: dict[str, Tensor], param: nn.Parameter, module_path: str
) -> Callable[[Tensor], Tensor] | None:
    """How to shape the delta for `param`, from its shape (computed on the meta device, free); None: no fit."""
    try:
        shape = tuple(fn({k: v.to("meta", torch.float32) for k, v in tensors.items()}).shape)
    except (RuntimeError, KeyError, IndexError):  # factors that do not multiply
        return None
    target = tuple(param.shape)
    if shape == target:
        return lambda d: d
    # Same outputs, same count: a conv flattened to (out, in * kh * kw), or a 1x1 conv for a linear.
    if shape[0] == target[0] and math.prod(shape) == math.prod(target):
        return lambda d: d.reshape(target)
    # An inpainting UNet's first conv takes 9 channels, a base model's 4: the extra ones stay as they are.
    if module_path == "unet.input_blocks.0.0" and len(shape) == 4 and shape[1] < target[1] and \
            (shape[0], *shape[2:]) == (target[0], *target[2:]):
        return lambda d: torch.nn.functional.pad(d, (0, 0, 0, 0, 0, target[1] - shape[1]))
    return None


def _lazy_delta(
    fn: Callable[[dict[str, Tensor]], Tensor], tensors: dict[str, Tensor], param: nn.Parameter,
    fit: Callable[[Tensor], Tensor],
) -> Callable[[], Tensor]:
    def delta() -> Tensor:
        # On the weight's device at the time of use, in float32 whatever the file's dtype.
        w = {k: v.to(device=param.device, dtype=torch.float32) for k, v in tensors.items()}
        return fit(fn(w) * w["_scale"])

    return delta


def _layer_deltas(
    roots: Mapping[str, nn.Module], module_path: str, builders: list[Builder]
) -> list[tuple[str, Callable[[], Tensor]]] | None:
    """(target, lazy delta) for each parameter the layer changes; None when one does not fit."""
    root, _, path = module_path.partition(".")
    module = roots[root].get_submodule(path)
    deltas = []
    for fn, tensors, param_name in builders:
        param = module._parameters.get(param_name)
        fit = _fitter(fn, tensors, param, module_path) if param is not None else None
        if fit is None:
            return None
        deltas.append((f"{module_path}.{param_name}", _lazy_delta(fn, tensors, param, fit)))
    return deltas


def _count(layers: list[str]) -> str:
    return f"{len(layers)} layer{'' if len(layers) == 1 else 's'} {'is' if len(layers) == 1 else 'are'}"


def _examples(keys: list[str], groups: Mapping[str, Mapping[str, Tensor]]) -> str:
    return ", ".join(f"{k} [{', '.join(sorted(groups[k]))}]" for k in keys[:2])


def _guess_base_model(state_dict: Mapping[str, Tensor]) -> str | None:
    """The base model a LoRA was trained for, from its keys and its cross-attention input width."""
    if any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for k in state_dict):
        return "SDXL"
    for key, tensor in state_dict.items():
        if re.search(r"attn2[._]to_k[._](lora_down|lora_A|lora[._]down)", key) and tensor.ndim == 2:
            return _CONTEXT_WIDTHS.get(tensor.shape[1])
    return None
