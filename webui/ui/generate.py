"""The generate, interrupt and skip handlers of a generation tab.

Generate is a generator: it submits the request values to the service, polls the job's status and
yields progress and live previews until the job ends, then the images, infotexts and seeds. Interrupt and
Skip only tell the service (no Gradio `cancels=`, which would throw the finished images away); the
generator ends by itself when the job does, with the images finished so far.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import gradio as gr
from gradio.components import Component
from PIL import Image

from webui.errors import WebUIError
from webui.ui.feedback import error_html, finished_html, owner_of, progress_html
from webui.ui.services import JobStatus, UIServices

if TYPE_CHECKING:
    from webui.ui.generation_tab import GenerationTab

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
HIDDEN = {"visible": False}


def with_infotext(image: Image.Image, infotext: str | None) -> Image.Image:
    """The image with its "parameters" text, so the PNG the gallery serves carries it (copied, not mutated)."""
    if not infotext or image.info.get("parameters"):
        return image
    copy = image.copy()
    copy.info["parameters"] = infotext
    return copy


def _unexpected(exc: Exception) -> str:
    log.exception("unexpected error in the UI's generate handler")
    return error_html(f"Unexpected {type(exc).__name__}: {exc} (details in the server log)")


def make_generate(services: UIServices, tab: GenerationTab,
                  poll_seconds: float = POLL_SECONDS) -> Callable[..., Iterator[dict[Component, Any]]]:
    """The handler; Gradio passes the inputs by name: checkpoint, vae, the request fields, the mode's extras."""

    def generate(request: gr.Request, **values: Any) -> Iterator[dict[Component, Any]]:
        owner = owner_of(request)
        checkpoint, vae = values.pop("checkpoint", None), values.pop("vae", None)
        try:
            job_id = services.submit(owner, checkpoint, vae, tab.request_values(values))
        except WebUIError as exc:  # RequestError names the field
            yield {tab.error: gr.update(value=error_html(exc), visible=True), tab.progress: ""}
            return
        except Exception as exc:  # a bug must show as a message, and the UI must keep working
            yield {tab.error: gr.update(value=_unexpected(exc), visible=True), tab.progress: ""}
            return

        start = time.monotonic()
        yield {tab.job: job_id, tab.error: gr.update(value="", **HIDDEN), tab.progress: "Submitted",
               tab.preview: gr.update(value=None, **HIDDEN)}
        finished = False
        try:
            shown_preview: tuple[int, ...] = ()
            while True:
                status = services.status(owner, job_id)
                if status.finished:
                    finished = True
                    break
                update: dict[Component, Any] = {tab.progress: progress_html(status, time.monotonic() - start)}
                preview_key = tuple(id(im) for im in status.preview)
                if preview_key and preview_key != shown_preview:
                    shown_preview = preview_key
                    update[tab.preview] = gr.update(value=list(status.preview), visible=True)
                yield update
                time.sleep(poll_seconds)
        except WebUIError as exc:
            yield {tab.error: gr.update(value=error_html(exc), visible=True), tab.progress: "",
                   tab.preview: gr.update(value=None, **HIDDEN)}
            return
        except Exception as exc:
            yield {tab.error: gr.update(value=_unexpected(exc), visible=True), tab.progress: "",
                   tab.preview: gr.update(value=None, **HIDDEN)}
            return
        finally:
            if not finished:  # closed by Gradio (page closed, client gone) or failed: nobody waits for it
                _quietly(services.interrupt, owner, job_id)
        yield final_update(tab, status, time.monotonic() - start)

    # Every input is optional for API clients (Gradio makes those without an initial value required): a
    # missing image the mode needs is refused by the tab with a message naming it, and extensions' inputs
    # (e.g. ControlNet's control images) are optional by nature.
    names = ["checkpoint", "vae", *tab.generate_inputs]
    generate.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
        inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request),
        *(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in names),
        inspect.Parameter("values", inspect.Parameter.VAR_KEYWORD),
    ])
    return generate


def final_update(tab: GenerationTab, status: JobStatus, elapsed: float) -> dict[Component, Any]:
    infotexts = list(status.infotexts)
    images = [with_infotext(im, infotexts[i] if i < len(infotexts) else None) for i, im in enumerate(status.images)]
    if status.state == "failed":
        error = gr.update(value=error_html(status.error or "The job failed."), visible=True)
    elif status.notices:  # e.g. an extension failed; the images are still there
        error = gr.update(value=error_html("\n".join(status.notices)), visible=True)
    else:
        error = gr.update(value="", **HIDDEN)
    return {
        tab.gallery: images,
        tab.infotext: infotexts[0] if infotexts else "",
        tab.images: images,
        tab.infotexts: infotexts,
        tab.seeds: list(status.seeds),
        tab.selected: 0,
        tab.progress: finished_html(status, elapsed),
        tab.preview: gr.update(value=None, **HIDDEN),
        tab.error: error,
    }


def _quietly(action: Callable[[str, str], None], owner: str, job_id: str) -> None:
    try:
        action(owner, job_id)
    except WebUIError as exc:  # e.g. the job has just finished: nothing to stop
        log.debug("ignored: %s", exc)


def make_job_action(action: Callable[[str, str], None], job_state: Component) -> Callable[..., None]:
    """Interrupt or Skip this session's current job (a no-op when there is none)."""

    def act(values: Mapping[Component, Any], request: gr.Request) -> None:
        job_id = values.get(job_state)
        if job_id:
            _quietly(action, owner_of(request), job_id)

    return act
