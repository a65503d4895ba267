"""Presets: `presets/*.yaml` files of GenerationRequest defaults, validated when read.

A preset is a mapping of GenerationRequest field names to values, e.g.

    description: SD 1.5 at its native 512x512
    width: 512
    height: 512
    sampler_name: DPM++ 2M

An unknown key is an error naming the file and the key; values are checked by GenerationRequest itself.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from webui.engine.request import GenerationRequest
from webui.errors import RequestError, WebUIError

META_KEYS = {"description"}
IMAGE_FIELDS = {"init_image", "mask", "extensions"}


class PresetError(WebUIError):
    pass


def load_preset(path: Path) -> dict[str, Any]:
    """A preset's field values (without its description), validated."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise PresetError(f"Preset {path.name}: cannot be read ({exc})") from exc
    if not isinstance(data, dict):
        raise PresetError(f"Preset {path.name}: expected a mapping of field names to values")
    allowed = {f.name for f in fields(GenerationRequest)} - IMAGE_FIELDS
    for key in data:
        if key not in allowed and key not in META_KEYS:
            raise PresetError(f"Preset {path.name}: unknown key '{key}' (allowed: {', '.join(sorted(allowed))})")
    values = {k: v for k, v in data.items() if k not in META_KEYS}
    try:
        GenerationRequest(**values)
    except RequestError as exc:
        raise PresetError(f"Preset {path.name}: {exc}") from exc
    return values


def load_presets(folder: Path) -> dict[str, dict[str, Any]]:
    """Every preset in `folder` by name (the file name without .yaml), sorted."""
    return {p.stem: load_preset(p) for p in sorted(Path(folder).glob("*.yaml"))}
