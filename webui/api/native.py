"""Our own REST API (`/api/v1`): submit a job, follow it (status, or a stream of events), fetch its
images, cancel it. Typed, and documented by its OpenAPI schema at /api/v1/openapi.json.

A job request has every `GenerationRequest` field under its own name (images as base64 strings), plus
`checkpoint`, `vae` and `save`. Each caller sees and cancels only their own jobs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, fields
from typing import Any, get_args, get_origin, get_type_hints

from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from PIL import Image
from pydantic import BaseModel, Field, create_model

from webui.engine.request import GenerationRequest
from webui.engine.sampling.registry import SAMPLERS, SCHEDULES
from webui.jobs import JobNotFound
from webui.outputs import png_bytes
from webui.service import WebUIService
from webui.ui.services import JobStatus
from webui.uploads import decode_image

from .a1111 import StrictModel
from .common import install_error_handlers, owner_of

EVENT_POLL_SECONDS = 0.2
IMAGE_FIELDS = tuple(name for name, kind in get_type_hints(GenerationRequest).items()
                     if Image.Image in get_args(kind))


def _field_type(kind: Any) -> Any:
    """A GenerationRequest field's type as the JSON request has it."""
    if Image.Image in get_args(kind):
        return str | None  # base64, or a data URL
    if get_origin(kind) is Mapping or kind is Mapping:
        return dict[str, Any]
    return kind


def _job_request_model() -> type[BaseModel]:
    hints = get_type_hints(GenerationRequest)
    definitions: dict[str, Any] = {}
    for f in fields(GenerationRequest):
        default = f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]
        description = "a base64 image (or data URL)" if f.name in IMAGE_FIELDS else None
        definitions[f.name] = (_field_type(hints[f.name]), Field(default, description=description))
    return create_model(
        "JobRequest", __base__=StrictModel,
        checkpoint=(str | None, Field(None, description="a name from the checkpoints list (default: the app's)")),
        vae=(str | None, Field(None, description='a name from the VAE list, or "Automatic"')),
        save=(bool | None, Field(None, description="save the images in the outputs folder (default: as Settings)")),
        **definitions,
    )


JobRequest = _job_request_model()


class JobError(BaseModel):
    code: str
    field: str | None = None
    message: str


class JobResponse(BaseModel):
    id: str
    state: str = Field(description="queued, running, done, failed or interrupted")
    queue_position: int = Field(description="1 = next to run; 0 when not waiting")
    phase: str
    step: int
    total_steps: int
    batch_index: int
    batch_count: int
    seeds: list[int]
    infotexts: list[str]
    images: list[str] = Field(description="URLs of the finished images (PNG with their infotext)")
    error: JobError | None = None
    notices: list[str]


class ModelLists(BaseModel):
    checkpoints: list[str]
    vaes: list[str]
    loras: list[str]
    embeddings: list[str]
    samplers: list[str]
    schedules: list[str]


def job_response(status: JobStatus) -> JobResponse:
    error = None
    if status.state == "failed":
        code = {"internal": "internal", "OutOfMemory": "out_of_memory"}.get(status.error_kind or "", "refused")
        error = JobError(code="invalid_value" if status.error_field else code, field=status.error_field,
                         message=status.error or "The job failed.")
    return JobResponse(id=status.id, state=status.state, queue_position=status.queue_position, phase=status.phase,
                       step=status.step, total_steps=status.total_steps, batch_index=status.batch_index,
                       batch_count=status.batch_count, seeds=list(status.seeds), infotexts=list(status.infotexts),
                       images=[f"/api/v1/jobs/{status.id}/images/{i}" for i in range(len(status.images))],
                       error=error, notices=list(status.notices))


def build_native(service: WebUIService) -> FastAPI:
    app = FastAPI(title="webui API", version="1", docs_url="/docs", redoc_url=None)
    install_error_handlers(app)

    @app.post("/jobs", status_code=202, response_model=JobResponse)
    def submit(request: Request, body: JobRequest) -> JobResponse:  # type: ignore[valid-type]
        # Only what the request gives: the rest takes the app's defaults (Settings' sampler, ...).
        values = body.model_dump(exclude={"checkpoint", "vae", "save"}, exclude_unset=True)
        for name in IMAGE_FIELDS:
            if name in values:
                values[name] = decode_image(values[name], name) if values[name] else None
        owner = owner_of(request)
        job_id = service.submit(owner, body.checkpoint or service.default_checkpoint(), body.vae, values,
                                save=body.save)
        return job_response(service.status(owner, job_id))

    @app.get("/jobs", response_model=list[JobResponse])
    def jobs(request: Request) -> list[JobResponse]:
        return [job_response(status) for status in service.owner_jobs(owner_of(request))]

    @app.get("/jobs/{job_id}", response_model=JobResponse)
    def job(request: Request, job_id: str) -> JobResponse:
        return job_response(service.status(owner_of(request), job_id))

    @app.delete("/jobs/{job_id}", response_model=JobResponse)
    def cancel(request: Request, job_id: str) -> JobResponse:
        owner = owner_of(request)
        service.interrupt(owner, job_id)
        return job_response(service.status(owner, job_id))

    @app.get("/jobs/{job_id}/images/{index}", response_class=Response,
             responses={200: {"content": {"image/png": {}}}, 404: {"description": "no such job or image"}})
    def image(request: Request, job_id: str, index: int) -> Response:
        status = service.status(owner_of(request), job_id)
        if not 0 <= index < len(status.images):
            raise JobNotFound(f"Job {job_id} has {len(status.images)} images; there is no image {index}.")
        text = status.infotexts[index] if index < len(status.infotexts) else ""
        return Response(png_bytes(status.images[index], text), media_type="image/png")

    @app.get("/jobs/{job_id}/events", response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}}})
    def events(request: Request, job_id: str) -> StreamingResponse:
        owner = owner_of(request)
        service.status(owner, job_id)  # 404 now, not inside the stream
        return StreamingResponse(event_stream(service, owner, job_id), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.get("/models", response_model=ModelLists)
    def models() -> ModelLists:
        return ModelLists(checkpoints=service.checkpoints(), vaes=service.vaes(), loras=service.loras(),
                          embeddings=service.embeddings(), samplers=[s.name for s in SAMPLERS],
                          schedules=list(SCHEDULES))

    return app


def event_stream(service: WebUIService, owner: str, job_id: str) -> Iterator[str]:
    """Server-sent events: a `status` event whenever the job's state, position or step changes, then `end`."""
    last = None
    while True:
        status = service.status(owner, job_id)
        key = (status.state, status.queue_position, status.phase, status.batch_index, status.step, len(status.images))
        if key != last:
            last = key
            yield f"event: status\ndata: {job_response(status).model_dump_json()}\n\n"
        if status.finished:
            yield f"event: end\ndata: {json.dumps({'id': job_id, 'state': status.state})}\n\n"
            return
        time.sleep(EVENT_POLL_SECONDS)

