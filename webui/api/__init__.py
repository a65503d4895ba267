"""REST APIs beside the Gradio app: AUTOMATIC1111's (`/sdapi/v1`, `sdapi.py`) and our own (`/api/v1`,
`native.py`), both on the app's job queue, and the security middleware in front of every route
(`security.py`). The composition root builds them: `security_middleware(...)` goes into Gradio's app as it
is created, `mount_api(app, service)` adds the APIs once it exists.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from starlette.middleware import Middleware

from .security import Guard, SecurityMiddleware


def security_middleware(guard: Guard, tokens: Callable[[], dict], trusted_origins: Callable[[], set[str]]) -> Middleware:
    """The middleware for Gradio's `launch(app_kwargs={"middleware": [...]})` (it wraps every route)."""
    return Middleware(SecurityMiddleware, guard=guard, tokens=tokens, trusted_origins=trusted_origins)


def put_first(app: FastAPI, routes: list) -> None:
    """Move `routes` before the others: Gradio's own routes end in catch-alls that would match first."""
    ours = [r for r in app.router.routes if r in routes]
    app.router.routes[:] = ours + [r for r in app.router.routes if r not in ours]


def mount_api(app: FastAPI, service) -> list[str]:
    """Mount /sdapi/v1 and /api/v1 on `app`; returns their paths."""
    from .native import build_native
    from .sdapi import ApiOptions, build_sdapi

    mounted = {"/sdapi/v1": build_sdapi(service, ApiOptions()), "/api/v1": build_native(service)}
    for path, sub_app in mounted.items():
        app.mount(path, sub_app)
    put_first(app, [r for r in app.router.routes if getattr(r, "path", None) in mounted])
    return list(mounted)
