"""What the user sees about a job and about errors: progress text and bar, error boxes, and who owns a job."""

from __future__ import annotations

import html

import gradio as gr

from webui.errors import RequestError
from webui.ui.services import JobStatus

_BOX = "padding:8px 12px;border-radius:6px;margin:4px 0;"
ERROR_STYLE = _BOX + "border:1px solid #dc2626;background:#fef2f2;color:#991b1b;"
NOTE_STYLE = _BOX + "border:1px solid #16a34a;background:#f0fdf4;color:#166534;"


def owner_of(request: gr.Request | None) -> str:
    """The authenticated user name when there is one, else this browser session (or API client)."""
    if request is None:
        return "local"
    username = getattr(request, "username", None)
    if username:
        return str(username)
    return str(getattr(request, "session_hash", None) or "local")


def error_message(exc: Exception) -> tuple[str | None, str]:
    """(the field it concerns or None, a message for the user)."""
    if isinstance(exc, RequestError):
        text = str(exc)
        prefix = f"{exc.field}: "
        return exc.field, text[len(prefix):] if text.startswith(prefix) else text
    return None, str(exc) or type(exc).__name__


def error_html(exc: Exception | str) -> str:
    """An error box naming the field (for RequestError) and the message."""
    field, message = (None, exc) if isinstance(exc, str) else error_message(exc)
    head = f"<strong>{html.escape(field)}</strong>: " if field else "<strong>Error</strong>: "
    data = f' data-field="{html.escape(field)}"' if field else ""
    return f'<div class="webui-error" role="alert"{data} style="{ERROR_STYLE}">{head}{html.escape(message)}</div>'


def notes_html(notes: list[str], empty: str) -> str:
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    body = f"<ul style='margin:0;padding-left:1.2em'>{items}</ul>" if notes else html.escape(empty)
    return f'<div class="webui-note" style="{NOTE_STYLE}">{body}</div>'


def _bar(fraction: float) -> str:
    percent = max(0.0, min(1.0, fraction)) * 100
    return (f'<div class="webui-progress-bar" style="height:6px;background:#e5e7eb;border-radius:3px;margin-top:4px">'
            f'<div style="width:{percent:.1f}%;height:6px;background:#f97316;border-radius:3px"></div></div>')


def progress_text(status: JobStatus) -> str:
    """"Step 5/20 · batch 1/2", "Queued: position 2", "Loading model", ..."""
    if status.state == "queued":
        return f"Queued: position {status.queue_position}" if status.queue_position else "Queued"
    if not status.total_steps:
        return (status.phase or "Starting").capitalize()
    text = f"Step {status.step}/{status.total_steps} · batch {status.batch_index + 1}/{max(status.batch_count, 1)}"
    if status.phase and status.phase != "sampling":
        text += f" · {status.phase}"
    return text


def progress_html(status: JobStatus, elapsed: float) -> str:
    """The running job's text and a bar over all batches."""
    text = progress_text(status)
    fraction = 0.0
    if status.total_steps:
        batches = max(status.batch_count, 1)
        fraction = (status.batch_index + status.step / status.total_steps) / batches
    return (f'<div class="webui-progress" data-state="{html.escape(status.state)}">'
            f'<span class="webui-progress-text">{html.escape(text)} · {elapsed:.1f} s</span>{_bar(fraction)}</div>')


def finished_html(status: JobStatus, elapsed: float) -> str:
    """The final line: done, interrupted (with the images finished so far) or failed."""
    count = len(status.images)
    images = f"{count} image{'s' if count != 1 else ''}"
    if status.state == "done":
        text = f"Done: {images} in {elapsed:.1f} s"
    elif status.state == "interrupted":
        text = f"Interrupted: {images} finished"
    else:
        text = f"Failed after {elapsed:.1f} s" + (f" ({images} finished)" if count else "")
    return (f'<div class="webui-progress" data-state="{html.escape(status.state)}">'
            f'<span class="webui-progress-text">{html.escape(text)}</span></div>')
