"""The points where extensions take part in a generation. The engine calls these methods; this base
class does nothing (no extensions). `webui.plugins.manager.ExtensionHooks` fills them from the
extensions' hooks, catching and attributing their errors, so the engine never sees them fail.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..prompts import ParsedPrompt
from ..request import GenerationRequest

if TYPE_CHECKING:
    from PIL import Image

    from ..models.loading import ModelBundle
    from ..patching import WeightPatch
    from ..sampling.denoisers import SamplingState
    from .context import ProgressEvent


class PipelineHooks:
    """No extensions: requests, prompts, models and images pass through unchanged."""

    def __init__(self) -> None:
        self.notices: list[str] = []  # messages for the user about this job (e.g. an extension's error)

    def rewrite_request(self, request: GenerationRequest, bundle: ModelBundle) -> GenerationRequest:
        return request

    def parse_prompt(self, text: str, steps: int, is_negative: bool) -> ParsedPrompt:
        return ParsedPrompt.literal(text, steps)

    def weight_patches(self, request: GenerationRequest, bundle: ModelBundle) -> list[WeightPatch]:
        return []

    def wrap_model(self, model: Any, request: GenerationRequest, bundle: ModelBundle, sampling: SamplingState) -> Any:
        return model

    def on_step(self, event: ProgressEvent) -> None:
        pass

    def postprocess_image(self, image: Image.Image, request: GenerationRequest, index: int) -> Image.Image:
        return image

    def infotext_fields(self, request: GenerationRequest) -> dict[str, str]:
        return {}
