"""What the UI needs from the rest of the app: a Protocol, so `webui/ui` never imports torch or the engine.

`webui/service.py` implements it; tests may implement a fake. Generation parameters travel as a dict
keyed by `GenerationRequest` field names (never by position); images are PIL images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image


@dataclass
class JobStatus:
    """One job as its owner sees it. `state`: queued, running, done, failed or interrupted."""

    id: str
    state: str
    queue_position: int = 0  # 0 when running or finished
    step: int = 0  # within the current sampling pass
    total_steps: int = 0
    batch_index: int = 0
    batch_count: int = 1
    phase: str = ""  # "sampling", "hires", "loading model", ...
    preview: list[Image.Image] = field(default_factory=list)  # latest live preview, if any
    images: list[Image.Image] = field(default_factory=list)  # finished images so far
    infotexts: list[str] = field(default_factory=list)  # one per finished image
    seeds: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # saved files, when saving is on
    error: str | None = None  # a message for the user when state == "failed"
    error_kind: str | None = None  # "RequestError", "OutOfMemory", "internal" (a bug), ...
    error_field: str | None = None  # the request field the error names, when it names one
    notices: list[str] = field(default_factory=list)  # warnings for the user (e.g. an extension failed)
    elapsed: float = 0.0  # seconds since it started running (0 while waiting)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "interrupted")


@dataclass(frozen=True)
class SettingSpec:
    """One setting of the Settings tab."""

    name: str
    label: str
    kind: str  # "text", "int", "float", "bool", "choice"
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    restart_required: bool = False
    help: str = ""


class UIServices(Protocol):
    # Models
    def checkpoints(self) -> list[str]: ...  # names from the scanned models folder
    def vaes(self) -> list[str]: ...  # "Automatic" (the checkpoint's own VAE) first, then VAE files
    def refresh_models(self) -> None: ...
    def default_checkpoint(self) -> str | None: ...  # the user's first checkpoint; the demo model if none
    def depth_support(self, checkpoint: str | None) -> str: ...  # Markdown: how the depth tab works with it
    def initial_values(self) -> dict[str, Any]: ...
    # ^ GenerationRequest field values the generation tabs start from, over the request defaults
    #   (e.g. the demo preset's 128x128 when the app starts on the demo model); read once, when the UI is built

    # Choices and helpers
    def samplers(self) -> list[str]: ...  # A1111 display names, UI order
    def schedules(self) -> list[str]: ...
    def presets(self) -> dict[str, dict[str, Any]]: ...  # preset name -> GenerationRequest field values
    def count_tokens(self, text: str) -> tuple[int, int]: ...  # (tokens, capacity: 75 x chunks)

    # Jobs: `owner` identifies the user/session; a user sees and cancels only their own jobs.
    def submit(self, owner: str, checkpoint: str | None, vae: str | None, values: dict[str, Any]) -> str: ...
    # ^ returns the job id; raises webui.errors.RequestError (has .field) or WebUIError with a user message
    def status(self, owner: str, job_id: str) -> JobStatus: ...
    def interrupt(self, owner: str, job_id: str) -> None: ...
    def skip(self, owner: str, job_id: str) -> None: ...

    # PNG Info
    def read_infotext(self, image: Image.Image) -> tuple[str | None, dict[str, Any]]: ...
    # ^ (the raw parameters text or None, GenerationRequest field values parsed from it)

    # Settings and extensions
    def setting_specs(self) -> list[SettingSpec]: ...
    def settings(self) -> dict[str, Any]: ...
    def save_settings(self, values: dict[str, Any]) -> list[str]: ...
    # ^ persists; returns notes such as "Attention backend: takes effect after a restart";
    #   raises RequestError naming the setting for a bad value
    def extensions(self) -> list[dict[str, Any]]: ...  # rows for the Extensions tab (name, version, status, error)
    def extension_access(self) -> bool: ...  # False when the app is exposed: install/update/remove are refused
    def set_extension_enabled(self, name: str, enabled: bool) -> str: ...  # persisted; a message for the user
    def install_extension(self, url: str) -> str: ...
    def extension_requirements(self, name: str) -> list[str]: ...
    def install_extension_requirements(self, name: str, confirmed: bool) -> str: ...
    def check_extension_updates(self) -> list[dict[str, Any]]: ...  # [{name, behind, error}]
    def update_extension(self, name: str) -> str: ...
    def uninstall_extension(self, name: str) -> str: ...
    # ^ all raise WebUIError with a message for the user
    def extension_tabs(self) -> list[tuple[str, Any]]: ...  # [(extension name, webui.plugins.TabSpec)]
    def extension_controls(self, tab: str) -> list[tuple[str, Any]]: ...  # [(extension name, ControlsSpec)]
    def loras(self) -> list[str]: ...  # LoRA names for the picker
    def embeddings(self) -> list[str]: ...  # textual-inversion embedding names usable in prompts
