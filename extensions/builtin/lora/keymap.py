"""Which layer of our model a LoRA file's key means.

LoRA files name layers in several dialects; all are turned into one form, "<part>:<layer path with
underscores>", and looked up in a table built from the model actually loaded:

    lora_unet_down_blocks_0_attentions_1_proj_in       kohya, diffusers UNet names
    lora_unet_input_blocks_2_1_proj_in                 kohya, original (LDM) UNet names (SDXL LoRAs)
    unet.down_blocks.0.attentions.1.proj_in            diffusers / PEFT
    diffusion_model.input_blocks.2.1.proj_in           original names with their prefix
    lora_te_text_model_encoder_layers_0_mlp_fc1        text encoder (lora_te1_ / lora_te2_ on SDXL)
    text_encoder.text_model.encoder.layers.0.mlp.fc1   diffusers / PEFT (text_encoder_2. on SDXL)

Our UNet keeps the original module names (`input_blocks.N.M`), so diffusers names are translated with
a block table derived from the model's UNetConfig (levels, res blocks per level, where attention is),
which makes it right for SD 1.x, 2.x, SDXL and the reduced test models alike.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from torch import nn

# Inside a ResBlock the original names keep the Sequential indices; diffusers names the layers.
_RESNET_PARTS = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_FIXED_BLOCKS = {
    "input_blocks.0.0": "conv_in",
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "label_emb.0.0": "add_embedding.linear_1",  # SDXL's conditioning vector y
    "label_emb.0.2": "add_embedding.linear_2",
    "out.0": "conv_norm_out",
    "out.2": "conv_out",
    "middle_block.0": "mid_block.resnets.0",
    "middle_block.1": "mid_block.attentions.0",
    "middle_block.2": "mid_block.resnets.1",
}
# Text encoder layer keys (underscored, with or without transformers' `text_model_` level).
_TE_LAYER = re.compile(r"^(?:text_model_)?encoder_layers_(\d+)_")

# File key prefix -> model part. "te" is the only text encoder of SD 1/2 (SDXL: the first, CLIP-L).
_PREFIXES = (
    ("lora_unet_", "unet"),
    ("lora_te1_", "te1"),
    ("lora_te2_", "te2"),
    ("lora_te_", "te"),
    ("unet.", "unet"),
    ("text_encoder_2.", "te2"),
    ("text_encoder.", "te"),
    ("model.diffusion_model.", "unet"),
    ("diffusion_model.", "unet"),
)

IGNORED = "<ignored>"  # a layer the model leaves out on purpose (SD 2's unused last text block)


def unet_block_table(cfg: object) -> dict[str, str]:
    """Original block prefix -> diffusers block prefix, e.g. "input_blocks.4.1" -> "down_blocks.1.attentions.0".

    `cfg` is a UNetConfig: input block i of level l, res block j is 1 + l * (res blocks + 1) + j (the
    extra slot per level holds the downsampler); output blocks count up from the deepest level.
    """
    table = dict(_FIXED_BLOCKS)
    res_blocks, attention = cfg.num_res_blocks, cfg.attention_levels  # type: ignore[attr-defined]
    levels, per_level = len(attention), cfg.num_res_blocks + 1  # type: ignore[attr-defined]
    for level in range(levels):
        for j in range(res_blocks):
            index = 1 + level * per_level + j
            table[f"input_blocks.{index}.0"] = f"down_blocks.{level}.resnets.{j}"
            if attention[level]:
                table[f"input_blocks.{index}.1"] = f"down_blocks.{level}.attentions.{j}"
        if level != levels - 1:
            table[f"input_blocks.{1 + level * per_level + res_blocks}.0.op"] = f"down_blocks.{level}.downsamplers.0.conv"
    for up in range(levels):
        level = levels - 1 - up  # up_blocks.0 is the deepest level
        for j in range(per_level):
            index = up * per_level + j
            table[f"output_blocks.{index}.0"] = f"up_blocks.{up}.resnets.{j}"
            if attention[level]:
                table[f"output_blocks.{index}.1"] = f"up_blocks.{up}.attentions.{j}"
        if level != 0:  # the upsampler follows the block's res block and (if any) attention
            position = 2 if attention[level] else 1
            table[f"output_blocks.{up * per_level + res_blocks}.{position}.conv"] = f"up_blocks.{up}.upsamplers.0.conv"
    return table


def ldm_to_diffusers(name: str, table: Mapping[str, str]) -> str | None:
    """Our (original) UNet module name -> the diffusers UNet2DConditionModel name; None if it has none."""
    parts = name.split(".")
    for k in range(min(len(parts), 4), 0, -1):
        block = ".".join(parts[:k])
        if block not in table:
            continue
        rest = parts[k:]
        if rest and ".resnets." in table[block] + ".":
            # "in_layers.2.weight" -> "conv1.weight", "skip_connection" -> "conv_shortcut"
            head = next((n for n in (2, 1) if ".".join(rest[:n]) in _RESNET_PARTS), None)
            if head is None:
                return None
            rest = [_RESNET_PARTS[".".join(rest[:head])], *rest[head:]]
        return ".".join([table[block], *rest])
    return None


def split_key(module_key: str) -> tuple[str, str] | None:
    """A file's layer key (suffix like `.lora_down.weight` removed) -> (part, underscored path), or None."""
    key = module_key.removeprefix("base_model.model.")
    for prefix, part in _PREFIXES:
        if key.startswith(prefix):
            return part, key[len(prefix):].replace(".", "_")
    return None


@dataclass(frozen=True)
class TextEncoderSlot:
    """One CLIP text model of the loaded text encoder and where it sits in the root mapping."""

    path: str  # module path of the CLIPTextModel, e.g. "text_encoder.model" or "text_encoder.encoders.1.model"
    model: nn.Module
    built_layers: int
    all_layers: int  # how many the original has (SD 2 builds one less: its last block is never used)


class LayerTable:
    """Lookup from LoRA layer keys to our module paths, for one loaded model."""

    def __init__(self, roots: Mapping[str, nn.Module]) -> None:
        self._paths: dict[tuple[str, str], str] = {}
        self._layers: dict[str, tuple[int, int]] = {}  # part -> (built, all) text encoder layers
        if "unet" in roots:
            self._add_unet(roots["unet"])
        if "text_encoder" in roots:
            slots = text_encoder_slots(roots["text_encoder"])
            if hasattr(roots["text_encoder"], "encoders"):
                # SDXL base: te1 = CLIP-L, te2 = bigG; diffusers' "text_encoder." is CLIP-L too.
                # The refiner has bigG alone, which LoRA tools call the second encoder.
                parts = [("te", "te1"), ("te2",)] if len(slots) == 2 else [("te2",)]
            else:
                parts = [("te",)]
            for names, slot in zip(parts, slots):
                for part in names:
                    self._add_text_encoder(part, slot)

    def _add(self, part: str, underscored: str, path: str) -> None:
        self._paths.setdefault((part, underscored), path)

    def _add_unet(self, unet: nn.Module) -> None:
        table = unet_block_table(unet.config)  # type: ignore[arg-type]
        for name in _weighted_modules(unet):
            self._add("unet", name.replace(".", "_"), f"unet.{name}")
            diffusers = ldm_to_diffusers(name, table)
            if diffusers is not None:
                self._add("unet", diffusers.replace(".", "_"), f"unet.{name}")

    def _add_text_encoder(self, part: str, slot: TextEncoderSlot) -> None:
        self._layers[part] = (slot.built_layers, slot.all_layers)
        for name in _weighted_modules(slot.model):
            bare = name.removeprefix("text_model.")  # transformers >= 5.6 has no `text_model` level
            for form in ("text_model." + bare, bare):
                self._add(part, form.replace(".", "_"), f"{slot.path}.{name}")

    def find(self, module_key: str) -> str | None:
        """Our module path for a file's layer key; IGNORED for layers left out on purpose; None if unknown."""
        split = split_key(module_key)
        if split is None:
            return None
        part, underscored = split
        path = self._paths.get((part, underscored))
        if path is not None or part == "unet":
            return path
        match = _TE_LAYER.match(underscored)
        if match and part in self._layers:
            built, total = self._layers[part]
            if built <= int(match[1]) < total:
                return IGNORED
        return None


def text_encoder_slots(text_encoder: nn.Module) -> list[TextEncoderSlot]:
    """The CLIP models of an SDTextEncoder (one) or an SDXLTextEncoder (its `encoders`, in order)."""
    if hasattr(text_encoder, "encoders"):
        named = [(f"text_encoder.encoders.{i}", e) for i, e in enumerate(text_encoder.encoders)]  # type: ignore[arg-type]
    else:
        named = [("text_encoder", text_encoder)]
    return [
        TextEncoderSlot(f"{path}.model", encoder.model, encoder.model.config.num_hidden_layers, encoder.cfg.layers)
        for path, encoder in named
    ]


def _weighted_modules(module: nn.Module) -> Iterable[str]:
    """Names of the submodules that own a `weight` parameter (the layers a patch can change)."""
    for name, sub in module.named_modules():
        if name and isinstance(sub._parameters.get("weight"), nn.Parameter):
            yield name
