"""The project's exception types. Each message tells the user what went wrong and what to do."""

from __future__ import annotations

from pathlib import Path


class WebUIError(Exception):
    """Base class: an error whose message is meant to be shown to the user as it is."""


class ModelLoadError(WebUIError):
    """A model file could not be read or used (corrupt, wrong kind, unknown architecture)."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        # The file's name, not its full path: the message may reach remote users (the API, a shared link).
        super().__init__(f"Cannot load '{Path(self.path).name or self.path}': {problem}")


class UnsupportedModelError(ModelLoadError):
    """A recognised architecture that this version cannot run yet (e.g. SDXL inpainting)."""


class RequestError(WebUIError):
    """A generation parameter with a value that is not allowed."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"{field}: {shown} is not allowed; expected {allowed}")


class UnknownName(RequestError):
    """A name (of a model, a LoRA, a setting...) that is not in the list it must come from."""


class Interrupted(WebUIError):
    """The user stopped the job."""


class Skipped(WebUIError):
    """The user skipped the current image; the job goes on with the next one."""
