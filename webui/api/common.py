"""What the REST APIs share: who is asking, errors as JSON that name the field, images as base64."""

from __future__ import annotations

import base64
import io
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from PIL import Image

from webui.errors import RequestError, UnknownName, WebUIError
from webui.jobs import JobNotFound, QueueFull
from webui.outputs import png_bytes

log = logging.getLogger("webui.api")
ANONYMOUS = "api"  # the owner of API jobs when the app has no logins (this computer alone)


def owner_of(request: Request) -> str:
    """The authenticated user (set by the security middleware), else the one anonymous API user."""
    return getattr(request.state, "webui_user", None) or ANONYMOUS


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """`{"error": {"code", "field", "message"}, "detail": message}`: our shape, plus the `detail` that
    FastAPI's and AUTOMATIC1111's clients read."""
    body = {"error": {"code": code, "field": field, "message": message}, "detail": message}
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_field(location: tuple) -> str:
    parts = [str(p) for p in location if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    """Every user error as a 4xx in our shape; a bug as a 500 that says only that (details in the log)."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = _validation_field(tuple(first.get("loc", ())))
        return error_response(422, "invalid_value", f"{field}: {first.get('msg', 'invalid value')}", field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}
        return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail),
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(UnknownName)
    async def unknown(request: Request, exc: UnknownName) -> JSONResponse:
        return error_response(404, "not_found", str(exc), exc.field)

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError) -> JSONResponse:
        return error_response(422, "invalid_value", str(exc), exc.field)

    @app.exception_handler(JobNotFound)
    async def no_job(request: Request, exc: JobNotFound) -> JSONResponse:
        return error_response(404, "not_found", str(exc), "id")

    @app.exception_handler(QueueFull)
    async def full(request: Request, exc: QueueFull) -> JSONResponse:
        return error_response(429, "queue_full", str(exc), headers={"Retry-After": "5"})

    @app.exception_handler(JobFailed)
    async def failed(request: Request, exc: JobFailed) -> JSONResponse:
        status = exc.status
        message = status.error or "The job failed."
        if status.error_kind == "internal":
            return error_response(500, "internal", message)
        if status.error_kind == "OutOfMemory":
            return error_response(503, "out_of_memory", message)
        if status.error_kind == "UnknownName":
            return error_response(404, "not_found", message, status.error_field)
        return error_response(422, "invalid_value" if status.error_field else "refused", message, status.error_field)

    @app.exception_handler(WebUIError)
    async def other(request: Request, exc: WebUIError) -> JSONResponse:
        return error_response(422, "refused", str(exc))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return error_response(500, "internal", f"Internal error ({type(exc).__name__}); details are in the server log")


class JobFailed(Exception):
    """A job that ended in failure, answered by what failed (see `install_error_handlers`)."""

    def __init__(self, status) -> None:  # a webui.ui.services.JobStatus
        super().__init__(status.error)
        self.status = status


def b64_png(image: Image.Image, infotext: str | None = None) -> str:
    return base64.b64encode(png_bytes(image, infotext or "")).decode("ascii")


def b64_jpeg(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=85)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
