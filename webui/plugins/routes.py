"""Extensions' HTTP routes (the `api_routes` hook), served under /extensions/<name>/ behind the app's login."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI

from webui.api import put_first
from webui.plugins.api import Route
from webui.plugins.manager import ExtensionManager

log = logging.getLogger("webui.extensions")
PATH = re.compile(r"[A-Za-z0-9_\-/{}.]{1,200}")
METHODS = ("GET", "POST")


def mount_extension_routes(app: FastAPI, manager: ExtensionManager) -> list[str]:
    """Add every extension's routes to `app`; returns the mounted paths. Bad routes are reported, not mounted.
    The app's security middleware (`webui.api.security`) puts them behind the login."""
    mounted = []
    for record, routes in manager.call("api_routes", {}):
        for route in routes if isinstance(routes, list) else [routes]:
            if not (isinstance(route, Route) and route.method.upper() in METHODS and PATH.fullmatch(route.path)
                    and ".." not in route.path and callable(route.handler)):
                manager.report_failure(record, "api_routes", ValueError(
                    f"not a valid Route (method GET/POST, path of letters, digits, _-/{{}}.): {route!r}"), None)
                continue
            path = f"/extensions/{record.name}/{route.path.lstrip('/')}"
            app.add_api_route(path, route.handler, methods=[route.method.upper()])
            mounted.append(path)
    put_first(app, [r for r in app.router.routes if getattr(r, "path", "") in mounted])
    return mounted
