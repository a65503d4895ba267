"""The data types of the extension API (see `hookspecs.py`), and the `hookimpl` marker."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from webui.plugins.hookspecs import PROJECT

hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(frozen=True)
class ExtensionContext:
    """What an extension is given: its name, its own folders, the model folders and a logger."""

    name: str
    folder: Path  # the extension's own folder (read-only for it: updates replace it)
    data_dir: Path  # where it may write its own files
    models_dir: Path  # the app's model root (checkpoints/, loras/, embeddings/, ...)
    log: logging.Logger = field(repr=False, default_factory=lambda: logging.getLogger("webui.extensions"))
    # What the app lends extensions: "model_names"(kind) lists a model folder ("loras", "embeddings", ...),
    # "model_path"(kind, name, field) gives the file of a listed name (RequestError for any other name).
    services: dict[str, Callable[..., Any]] = field(default_factory=dict, repr=False)
    # Tell the user something about the current job (shown with its results), e.g. "LoRA x not found".
    warn: Callable[[str], None] = field(default=lambda message: None, repr=False)
    # The extension's own objects kept between calls for the app's lifetime (e.g. loaded models), shared by
    # all its hooks; an extension keeps its state here rather than in module globals (API 1.1).
    state: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class TabSpec:
    """A tab an extension adds: `build()` creates its Gradio components inside the tab."""

    title: str
    build: Callable[[], None]


@dataclass(frozen=True)
class ControlsSpec:
    """Controls an extension adds to a generation tab: `build()` returns {parameter: component}. A `build`
    that takes a `prompt` argument receives the tab's prompt textbox (to insert text into it)."""

    title: str
    build: Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class Route:
    """An HTTP route: served at /extensions/<extension name>/<path>; `handler` is a FastAPI endpoint."""

    method: str  # "GET" or "POST"
    path: str
    handler: Callable[..., Any]


@dataclass(frozen=True)
class StepInfo:
    """One sampling step done (what `on_step` receives)."""

    step: int  # 1-based within the pass
    total_steps: int
    batch_index: int
    phase: str  # "sampling" or "hires"
    latents: Any  # the current x0 estimate, a (B, C, h, w) tensor; do not modify it
