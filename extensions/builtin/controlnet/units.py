"""ControlNet units: what the user asks for, validated, and written to / read from the infotext.

A request carries its units as `request.extensions["controlnet"]["units"]`, a list of dicts with
AUTOMATIC1111's ControlNet API names (`enabled`, `image`, `module`, `model`, `weight`, `resize_mode`,
`processor_res`, `threshold_a`, `threshold_b`, `guidance_start`, `guidance_end`, `pixel_perfect`,
`control_mode`), or as the UI sends them, flat: `unit0_model`, `unit0_weight`, ..., or as AUTOMATIC1111's
API sends them (`alwayson_scripts["ControlNet"]["args"]`, here `args`): its unit dicts, with its module and
resize-mode names, base64 images and the fields that change nothing here (`low_vram`, ...). Every bad
value is a `RequestError` naming the field, e.g. `controlnet.units[1].weight`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from PIL import Image

from webui.errors import RequestError
from webui.uploads import decode_image, normalize_image

from .preprocessors import PREPROCESSORS, threshold_defaults

NAME = "controlnet"
UI_UNITS = 3  # units shown in each tab (A1111's default "max models")
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
# A1111's ControlNet spelling; the engine's own resize modes are the same three in this order.
RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
SOFT_DECAY = 0.825  # "more important" modes: residual i of n is weighted decay ** (n - 1 - i) (the original's guess mode)
_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]{8,}\]$")
_FILE_SUFFIX = re.compile(r"\.(safetensors|sft|ckpt|pt|pth|bin)$", re.IGNORECASE)
# AUTOMATIC1111's ControlNet names for what we call otherwise.
MODULE_ALIASES = {"depth_midas": "depth", "depth_leres": "depth", "depth_leres++": "depth", "depth_zoe": "depth",
                  "invert (from white bg & black line)": "invert", "lineart_standard (from white bg & black line)":
                  "lineart", "scribble_thr": "scribble"}
RESIZE_ALIASES = {"scale to fit (inner fit)": "Crop and Resize", "envelope (outer fit)": "Resize and Fill"}
# Fields of AUTOMATIC1111's units that change nothing here (memory tricks, its own UI's state): dropped.
A1111_NO_OPS = ("low_vram", "save_detected_map", "is_ui", "input_mode", "batch_images", "effective_region_mask",
                "inpaint_crop_input_image")
A1111_FIXED = {"hr_option": "Both", "loopback": False}  # accepted with the value we do the same as


@dataclass(frozen=True)
class ControlUnit:
    model: str  # a name from models/controlnet (with or without extension)
    image: Image.Image | None = None  # None: the img2img / inpaint input image
    module: str = "none"  # the preprocessor
    weight: float = 1.0
    guidance_start: float = 0.0  # the fraction of the steps where the unit starts acting ...
    guidance_end: float = 1.0  # ... and where it stops
    control_mode: str = "Balanced"
    resize_mode: str = "Crop and Resize"
    threshold_a: float | None = None  # None: the preprocessor's default
    threshold_b: float | None = None
    pixel_perfect: bool = True  # preprocess at the generation size; otherwise at processor_res (short side)
    processor_res: int = 512
    enabled: bool = True

    @property
    def cond_only(self) -> bool:
        """"ControlNet is more important": the unit acts on the prompt's side of CFG only."""
        return self.control_mode == CONTROL_MODES[2]

    def scales(self, count: int) -> list[float]:
        """The weight of each of `count` residuals (input blocks, then the middle block)."""
        if self.control_mode == CONTROL_MODES[0]:
            return [self.weight] * count
        return [self.weight * SOFT_DECAY ** (count - 1 - i) for i in range(count)]

    def thresholds(self) -> tuple[float, float]:
        a, b = threshold_defaults(self.module)
        return (a if self.threshold_a is None else self.threshold_a), (b if self.threshold_b is None else self.threshold_b)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


UNIT_FIELDS = tuple(f.name for f in fields(ControlUnit))


def raw_units(params: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The units of an extension parameter mapping: its `units` list, AUTOMATIC1111's `args`, or the flat
    `unit<i>_<field>` keys."""
    params = params or {}
    units = [dict(u) if isinstance(u, Mapping) else u for u in params.get("units") or []]
    units += [from_a1111(u, len(units) + i) if isinstance(u, Mapping) else u
              for i, u in enumerate(params.get("args") or [])]
    flat: dict[int, dict[str, Any]] = {}
    for key, value in params.items():
        match = re.fullmatch(r"unit(\d+)_(\w+)", str(key))
        if match:
            flat.setdefault(int(match[1]), {})[match[2]] = value
    return units + [flat[i] for i in sorted(flat)]


def from_a1111(unit: Mapping[str, Any], index: int) -> dict[str, Any]:
    """An AUTOMATIC1111 ControlNet unit as ours: its names mapped, its no-op fields dropped. A mask, or a
    fixed field with another value, is refused rather than silently ignored."""
    unit = dict(unit)
    image = unit.get("image")
    if isinstance(image, Mapping):  # {"image": base64, "mask": base64}
        unit["image"], unit["mask"] = image.get("image"), image.get("mask") or unit.get("mask")
    if unit.pop("mask", None) not in (None, ""):
        raise RequestError(_field(index, "mask"), "a mask", "no mask: ControlNet masks are not supported here")
    for name in A1111_NO_OPS:
        unit.pop(name, None)
    for name, same in A1111_FIXED.items():
        value = unit.pop(name, same)
        if value != same:
            raise RequestError(_field(index, name), value, f"{same!r}: nothing else is supported here")
    if isinstance(unit.get("module"), str):
        unit["module"] = MODULE_ALIASES.get(unit["module"], unit["module"])
    if isinstance(unit.get("resize_mode"), str):
        unit["resize_mode"] = RESIZE_ALIASES.get(unit["resize_mode"].lower(), unit["resize_mode"])
    return unit


def _field(index: int, name: str) -> str:
    return f"{NAME}.units[{index}].{name}"


def _number(raw: Mapping, index: int, name: str, lo: float, hi: float, default: Any, integer: bool = False) -> Any:
    value = raw.get(name)
    if value is None:
        return default
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi or (integer and not float(value).is_integer()):
        raise RequestError(_field(index, name), value, f"{kind} from {lo:g} to {hi:g}")
    return int(value) if integer else float(value)


def _choice(raw: Mapping, index: int, name: str, choices: tuple[str, ...], default: str) -> str:
    value = raw.get(name)
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(choices):
        return choices[value]  # A1111's API also takes the index
    for choice in choices:
        if isinstance(value, str) and value.strip().lower() == choice.lower():
            return choice
    raise RequestError(_field(index, name), value, "one of " + ", ".join(repr(c) for c in choices))


def _flag(raw: Mapping, index: int, name: str, default: bool) -> bool:
    value = raw.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(_field(index, name), value, "true or false")
    return value


def model_name(value: str) -> str:
    """A model name without the " [hash]" that infotexts and A1111's API add."""
    return _HASH_SUFFIX.sub("", value.strip())


def parse_unit(raw: Any, index: int, find_model: Callable[[str], Any] | None = None) -> ControlUnit | None:
    """The validated unit, or None when it is switched off. `find_model(name)` raises for an unknown name."""
    if not isinstance(raw, Mapping):
        raise RequestError(f"{NAME}.units[{index}]", raw, "a mapping of unit fields")
    unknown = sorted(set(raw) - set(UNIT_FIELDS))
    if unknown:
        raise RequestError(_field(index, unknown[0]), raw[unknown[0]], f"a unit field ({', '.join(UNIT_FIELDS)})")
    if not _flag(raw, index, "enabled", True):
        return None
    model = raw.get("model")
    if not isinstance(model, str) or not model_name(model) or model_name(model).lower() == "none":
        raise RequestError(_field(index, "model"), model, "a ControlNet from models/controlnet (or turn the unit off)")
    model = model_name(model)
    if find_model is not None:
        find_model(model)
    image = raw.get("image")
    if isinstance(image, str):  # base64, from an API; "" means none
        image = decode_image(image, _field(index, "image")) if image else None
    if image is not None and not isinstance(image, Image.Image):
        raise RequestError(_field(index, "image"), type(image).__name__, "an image")
    if image is not None:
        image = normalize_image(image)  # 16-bit, CMYK, EXIF orientation, as every upload
    module = raw.get("module") or "none"
    if module not in PREPROCESSORS:
        raise RequestError(_field(index, "module"), module, "one of " + ", ".join(PREPROCESSORS))
    start = _number(raw, index, "guidance_start", 0.0, 1.0, 0.0)
    end = _number(raw, index, "guidance_end", 0.0, 1.0, 1.0)
    if end < start:
        raise RequestError(_field(index, "guidance_end"), end, f"a fraction from guidance_start ({start:g}) to 1")
    return ControlUnit(
        model=model, image=image, module=module,
        weight=_number(raw, index, "weight", 0.0, 2.0, 1.0),
        guidance_start=start, guidance_end=end,
        control_mode=_choice(raw, index, "control_mode", CONTROL_MODES, "Balanced"),
        resize_mode=_choice(raw, index, "resize_mode", RESIZE_MODES, "Crop and Resize"),
        threshold_a=_number(raw, index, "threshold_a", 0.0, 255.0, None),
        threshold_b=_number(raw, index, "threshold_b", 0.0, 255.0, None),
        pixel_perfect=_flag(raw, index, "pixel_perfect", True),
        processor_res=_number(raw, index, "processor_res", 64, 2048, 512, integer=True),
    )


def parse_units(params: Mapping[str, Any] | None, find_model: Callable[[str], Any] | None = None) -> list[ControlUnit]:
    """The enabled units of the extension's parameters, validated (RequestError for the first bad value)."""
    units = [parse_unit(raw, i, find_model) for i, raw in enumerate(raw_units(params))]
    return [u for u in units if u is not None]


# --- infotext -------------------------------------------------------------------------------------

def infotext_value(unit: ControlUnit, model_hash: str | None) -> str:
    """`Module: canny, Model: name [hash], Weight: 1, ...` as AUTOMATIC1111's ControlNet writes it."""
    a, b = unit.thresholds()
    name = _FILE_SUFFIX.sub("", unit.model)  # as A1111 shows model names
    model = f"{name} [{model_hash[:8]}]" if model_hash else name
    parts = [("Module", unit.module), ("Model", model), ("Weight", f"{unit.weight:g}"),
             ("Resize Mode", unit.resize_mode), ("Processor Res", unit.processor_res),
             ("Threshold A", f"{a:g}"), ("Threshold B", f"{b:g}"),
             ("Guidance Start", f"{unit.guidance_start:g}"), ("Guidance End", f"{unit.guidance_end:g}"),
             ("Pixel Perfect", unit.pixel_perfect), ("Control Mode", unit.control_mode)]
    return ", ".join(f"{k}: {v}" for k, v in parts)


_INFOTEXT_FIELDS = {"Module": ("module", str), "Model": ("model", model_name), "Weight": ("weight", float),
                    "Resize Mode": ("resize_mode", str), "Processor Res": ("processor_res", int),
                    "Threshold A": ("threshold_a", float), "Threshold B": ("threshold_b", float),
                    "Guidance Start": ("guidance_start", float), "Guidance End": ("guidance_end", float),
                    "Pixel Perfect": ("pixel_perfect", lambda v: v.strip().lower() == "true"),
                    "Control Mode": ("control_mode", str)}


def read_infotext_value(text: str) -> dict[str, Any]:
    """The unit fields of a `ControlNet N` infotext value (fields that do not parse are left out)."""
    unit: dict[str, Any] = {"enabled": True}
    for part in text.split(", "):
        key, sep, value = part.partition(": ")
        if not sep or key.strip() not in _INFOTEXT_FIELDS:
            continue
        name, convert = _INFOTEXT_FIELDS[key.strip()]
        try:
            unit[name] = convert(value.strip())
        except ValueError:
            continue
    if unit.get("module") not in PREPROCESSORS:
        unit["module"] = "none"  # another tool's preprocessor: the user picks one of ours
    for name, choices in (("control_mode", CONTROL_MODES), ("resize_mode", RESIZE_MODES)):
        if name in unit:  # our spelling, or left out when it is none of ours
            match = next((c for c in choices if c.lower() == str(unit[name]).lower()), None)
            if match is None:
                del unit[name]
            else:
                unit[name] = match
    return unit
