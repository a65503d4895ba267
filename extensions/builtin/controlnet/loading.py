"""ControlNet files: what they hold (from keys and shapes), the diffusers layout converted to the
original one, and loading into `network.ControlNet`.

Accepted: the original layout with the `control_model.` prefix (ControlNet 1.0/1.1 `.pth`/`.safetensors`,
also when the whole SD model is saved beside it, and their fp16 "pruned" copies) or without it, and the
diffusers layout (`controlnet_cond_embedding.*`, `down_blocks.*`, ...). The base family is read from the
weights: SDXL has `label_emb`, SD 2.x uses linear transformer projections, SD 1.x 1x1 convolutions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from webui.engine.models.checkpoint_file import open_checkpoint
from webui.engine.models.detection import infer_unet_config
from webui.errors import ModelLoadError

from .network import ControlNet, ControlNetConfig

ORIGINAL_PREFIX = "control_model."
Shapes = Mapping[str, tuple[int, ...]]

# diffusers ResBlock names -> the original's
_RESNET = {"norm1.": "in_layers.0.", "conv1.": "in_layers.2.", "time_emb_proj.": "emb_layers.1.",
           "norm2.": "out_layers.0.", "conv2.": "out_layers.3.", "conv_shortcut.": "skip_connection."}


def _indices(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def diffusers_prefix_map(keys) -> dict[str, str]:
    """diffusers ControlNet key prefix -> original key prefix, for the blocks present in `keys`."""
    keys = list(keys)
    mapping = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
               "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2.",
               "conv_in.": "input_blocks.0.0.", "controlnet_cond_embedding.conv_in.": "input_hint_block.0.",
               "controlnet_mid_block.": "middle_block_out.0.", "mid_block.attentions.0.": "middle_block.1."}
    hint_blocks = _indices(keys, r"controlnet_cond_embedding\.blocks\.(\d+)\.")
    for k in hint_blocks:
        mapping[f"controlnet_cond_embedding.blocks.{k}."] = f"input_hint_block.{2 * k + 2}."
    mapping["controlnet_cond_embedding.conv_out."] = f"input_hint_block.{2 * len(hint_blocks) + 2}."
    for i in _indices(keys, r"controlnet_down_blocks\.(\d+)\."):
        mapping[f"controlnet_down_blocks.{i}."] = f"zero_convs.{i}.0."
    for j, original in ((0, 0), (1, 2)):
        for name, ours in _RESNET.items():
            mapping[f"mid_block.resnets.{j}.{name}"] = f"middle_block.{original}.{ours}"
    block = 1  # input_blocks.0 is conv_in
    for level in _indices(keys, r"down_blocks\.(\d+)\."):
        for j in _indices(keys, rf"down_blocks\.{level}\.resnets\.(\d+)\."):
            for name, ours in _RESNET.items():
                mapping[f"down_blocks.{level}.resnets.{j}.{name}"] = f"input_blocks.{block}.0.{ours}"
            mapping[f"down_blocks.{level}.attentions.{j}."] = f"input_blocks.{block}.1."  # same names inside
            block += 1
        if any(k.startswith(f"down_blocks.{level}.downsamplers.") for k in keys):
            mapping[f"down_blocks.{level}.downsamplers.0.conv."] = f"input_blocks.{block}.0.op."
            block += 1
    return mapping


def diffusers_to_original(names) -> dict[str, str]:
    """original key -> diffusers key, for every key of a diffusers-layout ControlNet (an unknown key raises)."""
    names = list(names)
    prefixes = sorted(diffusers_prefix_map(names).items(), key=lambda item: -len(item[0]))
    out = {}
    for key in names:
        match = next(((d, o) for d, o in prefixes if key.startswith(d)), None)
        if match is None:
            raise ValueError(f"unexpected key {key!r} in a diffusers ControlNet")
        out[match[1] + key[len(match[0]):]] = key
    return out


def is_diffusers_layout(shapes: Shapes) -> bool:
    return "controlnet_cond_embedding.conv_in.weight" in shapes


def describe_other(shapes: Shapes) -> str | None:
    """What a file that is not a ControlNet is, for the error message."""
    keys = list(shapes)
    if any(k.startswith("adapter.") or k.startswith("body.") for k in keys):
        return "this is a T2I-Adapter, which is not supported (only ControlNets are)"
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return "this is a Stable Diffusion checkpoint, not a ControlNet: put it in models/checkpoints/"
    if any(k.startswith(("lora_unet_", "lora_te")) for k in keys):
        return "this is a LoRA, not a ControlNet: put it in models/loras/"
    return None


@dataclass(frozen=True)
class ControlNetFile:
    """What a ControlNet file holds: its layout, config, and network name -> file key."""

    path: Path
    config: ControlNetConfig
    names: dict[str, str]


def inspect_controlnet(path: str | Path) -> ControlNetFile:
    """Read a ControlNet file's header (safetensors) and tell what it is; raises ModelLoadError otherwise."""
    path = Path(path)
    with open_checkpoint(path) as f:
        return _describe(path, f.shapes)


def _describe(path: Path, shapes: Shapes) -> ControlNetFile:
    if "lora_controlnet" in shapes:
        raise ModelLoadError(path, "this is a Control-LoRA, which is not supported (full ControlNets are)")
    if any(k.startswith(ORIGINAL_PREFIX) for k in shapes):
        names = {k[len(ORIGINAL_PREFIX):]: k for k in shapes if k.startswith(ORIGINAL_PREFIX)}
    elif is_diffusers_layout(shapes):
        try:
            names = diffusers_to_original(shapes)
        except ValueError as exc:
            raise ModelLoadError(path, f"not a ControlNet in the diffusers layout ({exc})") from exc
    else:
        names = {k: k for k in shapes}
    if "input_hint_block.0.weight" not in names:
        raise ModelLoadError(path, describe_other(shapes) or "not a ControlNet (no hint encoder "
                             "'input_hint_block' / 'controlnet_cond_embedding' found)")
    local = {name: shapes[key] for name, key in names.items()}
    try:
        linear = next(len(s) == 2 for k, s in local.items() if k.endswith("proj_in.weight"))
        sdxl = "label_emb.0.0.weight" in local
        unet = infer_unet_config(local, "", sd2_heads=sdxl or linear, encoder_only=True)
        hint = [local[f"input_hint_block.{i}.weight"] for i in _indices(local, r"input_hint_block\.(\d+)\.weight")]
    except (KeyError, ValueError, IndexError, StopIteration) as exc:
        raise ModelLoadError(path, f"incomplete or damaged ControlNet layout ({exc!r})") from exc
    family = "sdxl" if sdxl else ("sd2" if linear else "sd1")
    config = ControlNetConfig(unet, family, tuple((s[1], s[0]) for s in hint))
    return ControlNetFile(path, config, names)


def load_controlnet(path: str | Path, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> ControlNet:
    """A ControlNet file as a `ControlNet` in `dtype` on `device`, in eval mode."""
    path = Path(path)
    with open_checkpoint(path) as f:
        described = _describe(path, f.shapes)
        with torch.device("meta"):
            network = ControlNet(described.config)
        expected = set(network.state_dict())
        missing, unexpected = expected - set(described.names), set(described.names) - expected
        if missing or unexpected:
            raise ModelLoadError(path, f"the ControlNet weights do not match the detected layout: missing "
                                       f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        state = {name: f.read(key, dtype, device) for name, key in described.names.items()}
    try:
        network.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ModelLoadError(path, f"the ControlNet weights have unexpected shapes ({exc})") from exc
    return network.eval().requires_grad_(False)
