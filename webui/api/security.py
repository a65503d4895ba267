"""The one middleware in front of every route (Gradio's, the REST APIs', extensions'):

1. Cross-site writes are refused (403): a state-changing request (not GET/HEAD/OPTIONS) whose browser
   says it comes from another site (`Sec-Fetch-Site: cross-site`, an `Origin` that is not this server's
   own or the share link's, or `Origin: null`). Non-browser clients send no `Origin` and are not affected.
2. Request bodies are capped (413) by their `Content-Length`; a body sent without one (chunked) is
   refused (411): browsers and HTTP client libraries always send it.
3. The REST APIs (/sdapi/, /api/v1/) and extensions' routes (/extensions/) need a login when the app has
   any: HTTP Basic, a login's password as a bearer token, or the UI's session cookie (401 otherwise). The
   user found is given to the routes as `request.state.webui_user`. The REST APIs take JSON only (415).
   When the API is off (the app is exposed without --api), its routes do not exist (404).
4. Failed logins are limited per client address (429 for a while after too many), for the UI's login
   form and the APIs alike; credentials are compared in constant time.

Gradio checks its own routes' logins itself; this adds the rest around it.
"""

from __future__ import annotations

import base64
import collections
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
API_PREFIXES = ("/sdapi/", "/api/v1/")
LOGIN_PREFIXES = (*API_PREFIXES, "/extensions/")
LOGIN_FORMS = ("/login", "/login/")  # Gradio's login form posts here


@dataclass(frozen=True)
class Guard:
    """What the middleware enforces (built from the launch options by the composition root)."""

    ui_logins: tuple[tuple[str, str], ...] = ()
    api_logins: tuple[tuple[str, str], ...] = ()
    api_enabled: bool = True
    max_body_bytes: int = 64 << 20
    max_login_failures: int = 10  # per client address within `failure_window` seconds
    failure_window: float = 300.0

    @property
    def logins(self) -> tuple[tuple[str, str], ...]:
        return self.ui_logins + self.api_logins


class FailedLogins:
    """Failed login times per client address, forgetting the oldest addresses beyond `max_addresses`."""

    def __init__(self, limit: int, window: float, max_addresses: int = 10_000) -> None:
        self.limit, self.window, self.max_addresses = limit, window, max_addresses
        self._times: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()

    def _recent(self, address: str) -> collections.deque[float]:
        times = self._times.setdefault(address, collections.deque())
        self._times.move_to_end(address)
        while times and time.monotonic() - times[0] > self.window:
            times.popleft()
        while len(self._times) > self.max_addresses:
            self._times.popitem(last=False)
        return times

    def blocked(self, address: str) -> float:
        """Seconds until `address` may try again (0: it may now)."""
        times = self._recent(address)
        return self.window - (time.monotonic() - times[0]) if len(times) >= self.limit else 0.0

    def failed(self, address: str) -> None:
        self._recent(address).append(time.monotonic())


class SecurityMiddleware:
    """An ASGI middleware (see the module docstring). `tokens()` gives Gradio's session tokens (token ->
    user); `trusted_origins()` the origins besides this server's own that may write (the share link)."""

    def __init__(self, app, guard: Guard, tokens: Callable[[], dict] = dict,
                 trusted_origins: Callable[[], set[str]] = set) -> None:
        self.app, self.guard, self.tokens, self.trusted_origins = app, guard, tokens, trusted_origins
        self.failures = FailedLogins(guard.max_login_failures, guard.failure_window)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        address = (scope.get("client") or ("unknown",))[0]
        if method not in SAFE_METHODS and self.cross_site(headers):
            await respond(send, 403, "forbidden", "Cross-site requests may not change anything here.")
            return
        length = headers.get("content-length", "")
        if "chunked" in headers.get("transfer-encoding", "").lower() and not length:
            await respond(send, 411, "length_required", "Send the body with a Content-Length.")
            return
        if length.isdigit() and int(length) > self.guard.max_body_bytes:
            await respond(send, 413, "too_large", f"The request body is larger than "
                                                  f"{self.guard.max_body_bytes >> 20} MB.")
            return
        if path.startswith(API_PREFIXES) and not self.guard.api_enabled:
            await respond(send, 404, "not_found", "The REST API is off: the app is exposed; start it with --api.")
            return
        if path in LOGIN_FORMS and method == "POST":
            await self.login_form(scope, receive, send, address)
            return
        if path.startswith(LOGIN_PREFIXES):
            wait = self.failures.blocked(address)
            if wait:
                await respond(send, 429, "too_many_failed_logins", "Too many failed logins; try again later.",
                              {"retry-after": str(int(wait) + 1)})
                return
            user = self.authenticate(headers)
            if user is None:
                if "authorization" in headers:
                    self.failures.failed(address)
                await respond(send, 401, "not_authenticated", "Log in first (HTTP Basic, a bearer token, or the "
                                                              "UI's session).", {"www-authenticate": "Basic"})
                return
            scope.setdefault("state", {})["webui_user"] = user or None
            content_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if path.startswith(API_PREFIXES) and method in ("POST", "PUT", "PATCH") and content_type not in (
                    "application/json", ""):
                await respond(send, 415, "unsupported_media_type", "Send JSON (Content-Type: application/json).")
                return
        await self.app(scope, receive, send)

    def cross_site(self, headers: dict[str, str]) -> bool:
        if headers.get("sec-fetch-site") == "cross-site":
            return True
        origin = headers.get("origin")
        if origin is None:
            return False  # not a browser's cross-origin request
        if origin == "null" or urlsplit(origin).netloc.lower() != headers.get("host", "").lower():
            return origin.rstrip("/") not in {o.rstrip("/") for o in self.trusted_origins()}
        return False

    def authenticate(self, headers: dict[str, str]) -> str | None:
        """The user ("" when the app has no logins), or None when the request is not logged in."""
        logins = self.guard.logins
        if not logins:
            return ""
        header = headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            return next((u for u, p in logins if _same(user, u) & _same(password, p)), None)
        if scheme.lower() == "bearer":
            return next((u for u, p in logins if _same(credentials.strip(), p)), None)
        cookies = _cookies(headers.get("cookie", ""))
        tokens = self.tokens() or {}
        for name, value in cookies.items():
            if name.startswith("access-token") and value in tokens:
                return str(tokens[value])
        return None

    async def login_form(self, scope: Scope, receive: Receive, send: Send, address: str) -> None:
        wait = self.failures.blocked(address)
        if wait:
            await respond(send, 429, "too_many_failed_logins", "Too many failed logins; try again later.",
                          {"retry-after": str(int(wait) + 1)})
            return

        async def watch(message: dict) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                self.failures.failed(address)
            await send(message)

        await self.app(scope, receive, watch)


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def _cookies(header: str) -> dict[str, str]:
    pairs = (part.strip().partition("=") for part in header.split(";") if "=" in part)
    return {name: value for name, _, value in pairs}


async def respond(send: Send, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": {"code": code, "field": None, "message": message}, "detail": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
