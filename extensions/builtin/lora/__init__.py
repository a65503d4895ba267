"""Built-in extension: LoRA-family networks, through the public hooks only.

`<lora:name:weight>` in the prompt applies models/loras/name.* at that weight; `<lora:name:te:unet>` gives
the text encoder and UNet their own weights, and `te=` / `unet=` may be named (AUTOMATIC1111's syntax:
the first number is the text encoder's, the second the UNet's, defaulting to the first). The tags are
removed from the text the model sees and stay in the infotext, so reading an image back restores them.
Networks may also be given directly as `request.extensions["lora"]["networks"]` (e.g. over the API).
"""

from __future__ import annotations

import functools
import re
from dataclasses import replace
from pathlib import Path

from webui.engine.models.checkpoint_file import file_sha256
from webui.plugins import ControlsSpec, hookimpl

from .networks import lora_patches, read_lora_file

TAG = re.compile(r"<lora:([^>]+)>")


def parse_tags(prompt: str) -> tuple[str, list[dict]]:
    """(the prompt without its <lora:...> tags, the networks they name). Malformed tags stay as text."""
    networks = []

    def take(match: re.Match) -> str:
        name, *params = [p.strip() for p in match[1].split(":")]
        positional = [p for p in params if "=" not in p]
        named = dict(p.split("=", 1) for p in params if "=" in p)
        try:
            te = float(named.get("te", positional[0] if positional else 1.0))
            unet = float(named.get("unet", positional[1] if len(positional) > 1 else te))
        except ValueError:
            return match[0]
        if not name:
            return match[0]
        networks.append({"name": name, "te": te, "unet": unet})
        return ""

    return TAG.sub(take, prompt), networks


def find_file(context, name: str) -> Path | None:
    """The LoRA file called `name`: its listed name, with or without extension or sub-folder."""
    for listed in context.services["model_names"]("loras"):
        stem = listed.rsplit(".", 1)[0]
        if name in (listed, stem, stem.rsplit("/", 1)[-1]):
            return context.services["model_path"]("loras", listed, "lora")
    return None


def short_hash(path: Path) -> str:
    """A1111's "Lora hashes" value: the first 12 hex digits of the file's SHA-256 (read once per file
    version, not once per image)."""
    stat = path.stat()
    return _short_hash(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=128)
def _short_hash(path: Path, mtime_ns: int, size: int) -> str:  # memoised by the file's identity
    return file_sha256(path)[:12]


@hookimpl
def rewrite_request(request):
    prompt, networks = parse_tags(request.prompt)
    if not networks:
        return None
    given = list(request.extensions.get("lora", {}).get("networks", []))
    extensions = {**request.extensions, "lora": {**request.extensions.get("lora", {}), "networks": given + networks}}
    return replace(request, prompt=prompt, extensions=extensions)


@hookimpl
def weight_patches(request, bundle, context):
    patches = []
    for network in request.extensions.get("lora", {}).get("networks", []):
        path = find_file(context, str(network.get("name", "")))
        if path is None:
            context.warn(f"no LoRA named {network.get('name')!r} in models/loras; it was left out")
            continue
        result = lora_patches(read_lora_file(path), bundle, float(network.get("unet", 1.0)),
                              float(network.get("te", 1.0)), path.stem)
        for warning in result.warnings:
            context.warn(warning)
        patches += result.patches
    return patches


@hookimpl
def infotext_fields(request, context):
    hashes = []
    for network in request.extensions.get("lora", {}).get("networks", []):
        path = find_file(context, str(network.get("name", "")))
        if path is not None:
            hashes.append(f"{network['name']}: {short_hash(path)}")
    return {"Lora hashes": ", ".join(hashes)} if hashes else None  # quoted by the infotext writer


@hookimpl
def ui_controls(tab, context):
    return ControlsSpec("LoRA", lambda prompt=None: build_picker(context, prompt))


def build_picker(context, prompt) -> dict:
    """A LoRA list, a weight and a button that adds the tag to the prompt. No request parameters."""
    import gradio as gr

    with gr.Row():
        name = gr.Dropdown(choices=context.services["model_names"]("loras"), label="LoRA", scale=3,
                           elem_classes=["lora-picker"])
        weight = gr.Slider(-2.0, 2.0, value=1.0, step=0.05, label="Weight", scale=2)
        add = gr.Button("Add to prompt", scale=1, elem_classes=["lora-add"])
    if prompt is not None:
        def insert(text, chosen, value):
            if not chosen:
                return text
            stem = Path(chosen).with_suffix("").name
            return f"{text or ''} <lora:{stem}:{value:g}>".strip()
        add.click(insert, inputs=[prompt, name, weight], outputs=prompt, queue=False, api_visibility="private")
    return {}
