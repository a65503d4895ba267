"""Extensions' HTTP routes (the `api_routes` hook), served under /extensions/<name>/ behind the UI's login."""

from __future__ import annotations

import base64
import hmac
import logging
import re

from fastapi import Depends, FastAPI, HTTPException, Request

from webui.plugins.api import Route
from webui.plugins.manager import ExtensionManager

log = logging.getLogger("webui.extensions")
PATH = re.compile(r"[A-Za-z0-9_\-/{}.]{1,200}")
METHODS = ("GET", "POST")


def login_dependency(app: FastAPI, logins: tuple[tuple[str, str], ...]):
    """A FastAPI dependency: without logins anyone passes; with them, the UI's session cookie or HTTP
    Basic credentials are required (401 otherwise)."""

    def require_login(request: Request) -> None:
        if not logins:
            return
        tokens = getattr(app, "tokens", {}) or {}
        for name, value in request.cookies.items():
            if name.startswith("access-token") and value in tokens:
                return
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(header[6:]).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                user, password = "", ""
            for login_user, login_password in logins:  # compare in constant time
                if hmac.compare_digest(user, login_user) & hmac.compare_digest(password, login_password):
                    return
        raise HTTPException(401, "Not authenticated", headers={"WWW-Authenticate": "Basic"})

    return require_login


def mount_extension_routes(app: FastAPI, manager: ExtensionManager, logins: tuple[tuple[str, str], ...]) -> list[str]:
    """Add every extension's routes to `app`; returns the mounted paths. Bad routes are reported, not mounted."""
    dependency = Depends(login_dependency(app, logins))
    mounted = []
    for record, routes in manager.call("api_routes", {}):
        for route in routes if isinstance(routes, list) else [routes]:
            if not (isinstance(route, Route) and route.method.upper() in METHODS and PATH.fullmatch(route.path)
                    and ".." not in route.path and callable(route.handler)):
                manager.report_failure(record, "api_routes", ValueError(
                    f"not a valid Route (method GET/POST, path of letters, digits, _-/{{}}.): {route!r}"), None)
                continue
            path = f"/extensions/{record.name}/{route.path.lstrip('/')}"
            app.add_api_route(path, route.handler, methods=[route.method.upper()], dependencies=[dependency])
            mounted.append(path)
    # Gradio's own routes end in catch-alls; ours must be matched before them.
    ours = [r for r in app.router.routes if getattr(r, "path", "") in mounted]
    app.router.routes[:] = ours + [r for r in app.router.routes if r not in ours]
    return mounted
