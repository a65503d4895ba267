"""The extension API: every hook an extension may implement. Version: `manifest.API_VERSION`.

An extension implements a hook by defining a function of the same name decorated with
`webui.plugins.hookimpl`; it may take any subset of the hook's arguments, by name. Every hook also
offers `context`, the extension's own `ExtensionContext` (its name, folders and app services). Each
implementation is called on its own: if it raises, the error is logged and shown, attributed to the
extension and hook, and everything else goes on (an extension that keeps failing is disabled).

Hooks that return something may also return None, meaning "nothing from me". Where several
extensions answer, results are combined in load order (built-ins first, then alphabetical).
A hook that refuses the user's input raises `webui.errors.RequestError` naming the field: that is
shown to the user as it is (the job fails, or is never queued) and does not count as a failure.
`docs/extensions.md` documents every hook (a test checks it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # the API's types, for readers and type checkers only (no import cost at start)
    from PIL import Image

    from webui.engine.models.loading import ModelBundle
    from webui.engine.patching import WeightPatch
    from webui.engine.prompts import ParsedPrompt
    from webui.engine.request import GenerationRequest
    from webui.engine.sampling.denoisers import SamplingState
    from webui.plugins.api import ControlsSpec, ExtensionContext, Route, StepInfo, TabSpec

PROJECT = "webui"
hookspec = pluggy.HookspecMarker(PROJECT)


# --- start-up and UI ------------------------------------------------------------------------


@hookspec
def startup(context: ExtensionContext) -> None:
    """Called once when the app starts, after every extension is loaded and before the UI is built.

    `context` gives the extension its own data folder, the model folders and a logger.
    """


@hookspec
def ui_tabs(context: ExtensionContext) -> list[TabSpec] | None:
    """Called while the UI is built. Return tabs to add (`TabSpec(title, build)`): `build()` is called
    inside the new `gr.Tab` and creates its Gradio components."""


@hookspec
def ui_controls(tab: str, context: ExtensionContext) -> ControlsSpec | None:
    """Called once per generation tab ("txt2img", "img2img", "inpaint", "depth") while the UI is built.

    Return `ControlsSpec(title, build)`: `build()` is called inside an accordion of that tab and returns
    a dict {parameter name: Gradio component}. When the user generates, the values land in
    `request.extensions[<extension name>][<parameter name>]`.
    """


@hookspec
def api_routes(context: ExtensionContext) -> list[Route] | None:
    """Called when the app starts serving. Return HTTP routes (`Route(method, path, handler)`); each is
    served under `/extensions/<extension name>/<path>`, behind the same login as the UI."""


# --- generation -----------------------------------------------------------------------------


@hookspec
def check_request(request: GenerationRequest, context: ExtensionContext) -> None:
    """Called when a request is submitted, before it is queued (API 1.1). Check this extension's
    parameters (`request.extensions[<name>]`) and raise `RequestError` naming the field
    (e.g. "controlnet.units[0].weight") to refuse the request; return None to accept it."""


@hookspec
def rewrite_request(request: GenerationRequest, bundle: ModelBundle, context: ExtensionContext) -> GenerationRequest | None:
    """Called once per job before generation, with the loaded model (`bundle`, API 1.1). Return a changed
    request (`dataclasses.replace(request, ...)`) or None. Extensions are applied in turn, each seeing the
    previous one's result. The infotext keeps the prompts as the user wrote them."""


@hookspec(firstresult=True)
def parse_prompt(text: str, steps: int, is_negative: bool, context: ExtensionContext) -> ParsedPrompt | None:
    """Turn prompt text into a `webui.engine.prompts.ParsedPrompt` (weights, AND-parts, schedules over
    `steps`). The first extension that returns one wins; without any, the text is used literally.
    Negative prompts (`is_negative`) must come back as one part of weight 1."""


@hookspec
def weight_patches(request: GenerationRequest, bundle: ModelBundle, context: ExtensionContext) -> list[WeightPatch] | None:
    """Called once per job after the model is loaded. Return `webui.engine.patching.WeightPatch`es;
    they are applied for this job only and the base weights are restored exactly afterwards."""


@hookspec
def wrap_model(model: Any, request: GenerationRequest, bundle: ModelBundle, sampling: SamplingState,
               context: ExtensionContext) -> Any | None:
    """Called when a job builds its denoiser. `model(x, t, context, **kwargs)` is the network call
    (the UNet, or an earlier extension's wrapper); return a callable with the same signature that
    runs code before and/or after calling it, or None. Called every network evaluation.

    The UNet also takes `control=[residual, ...]` (one per input block, then the middle block's: a
    ControlNet's output), added where its output blocks take their skip connections; a wrapper that
    adds control adds to any `control` it is given. `sampling` (API 1.1) is updated before every call:
    `sampling.step` / `sampling.total_steps` of this pass, and `sampling.uncond`, which rows of `x`
    belong to the negative prompt."""


@hookspec
def on_step(step: StepInfo, context: ExtensionContext) -> None:
    """Called after every sampling step with `StepInfo` (step, total, phase, current x0 estimate).
    For observation only; keep it fast."""


@hookspec
def postprocess_image(image: Image.Image, request: GenerationRequest, index: int, context: ExtensionContext) -> Image.Image | None:
    """Called for each finished image before it is saved. Return a new image or None."""


# --- infotext -------------------------------------------------------------------------------


@hookspec
def infotext_fields(request: GenerationRequest, context: ExtensionContext) -> dict[str, str] | None:
    """Called for each saved image. Return extra "Key: value" pairs for the image's infotext."""


@hookspec
def read_infotext(params: dict[str, str], context: ExtensionContext) -> dict[str, Any] | None:
    """Called when an infotext is read (PNG Info, "send to"). `params` are all its "Key: value" pairs;
    return this extension's parameters (they go to `request.extensions[<extension name>]`) or None."""


# --- registrations --------------------------------------------------------------------------


@hookspec
def register_samplers(context: ExtensionContext) -> list[Any] | None:
    """Called once at start-up. Return `webui.engine.sampling.registry.SamplerInfo`s whose `function`
    is a callable `sample(model, x, sigmas, callback=None, **options)` (k-diffusion's signature)."""


@hookspec
def register_schedules(context: ExtensionContext) -> dict[str, Any] | None:
    """Called once at start-up. Return {schedule name: function(n, schedule, sigma_min, sigma_max, rho)}
    giving n + 1 descending sigmas ending in 0, as `webui.engine.sampling.schedules` does."""


@hookspec
def register_model_families(context: ExtensionContext) -> list[Any] | None:
    """Called once at start-up. Return `webui.engine.models.detection.FamilyRule`s to try after the
    built-in ones when detecting what a checkpoint is."""
