"""The security middleware, on its own (a tiny app) and in front of the real app: logins, cross-site
writes, body limits, failed-login limits, every route's answer without a login, users kept apart."""

from __future__ import annotations

import base64
import time

import pytest
import requests
from fastapi import FastAPI, Request
from starlette.testclient import TestClient

from webui.api.security import Guard, SecurityMiddleware

from .conftest import SMALL

LOGINS = (("ann", "ann-secret-pw"),)
API_LOGINS = (("bot", "bot-token-0123456789"),)


def tiny_app(guard: Guard, tokens=None, trusted=None) -> TestClient:
    app = FastAPI()

    @app.get("/sdapi/v1/whoami")
    def whoami(request: Request) -> dict:
        return {"user": getattr(request.state, "webui_user", None)}

    @app.post("/sdapi/v1/echo")
    def echo(body: dict) -> dict:
        return body

    @app.post("/login")
    def login(request: Request) -> dict:
        from fastapi import HTTPException

        raise HTTPException(400, "Incorrect credentials.")

    @app.post("/gradio_api/queue/join")
    def join() -> dict:
        return {"ok": True}

    app.add_middleware(SecurityMiddleware, guard=guard, tokens=tokens or dict, trusted_origins=trusted or set)
    return TestClient(app, base_url="http://127.0.0.1:7860")


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_without_logins_everyone_here_is_the_one_local_user():
    client = tiny_app(Guard())
    assert client.get("/sdapi/v1/whoami").json() == {"user": None}


def test_logins_basic_bearer_and_the_ui_session():
    client = tiny_app(Guard(ui_logins=LOGINS, api_logins=API_LOGINS), tokens=lambda: {"tok123": "ann"})
    assert client.get("/sdapi/v1/whoami").status_code == 401
    assert client.get("/sdapi/v1/whoami").headers["www-authenticate"] == "Basic"
    assert client.get("/sdapi/v1/whoami", headers=basic("ann", "ann-secret-pw")).json() == {"user": "ann"}
    assert client.get("/sdapi/v1/whoami", headers=basic("ann", "wrong")).status_code == 401
    assert client.get("/sdapi/v1/whoami", headers={"Authorization": "Bearer bot-token-0123456789"}).json() == {
        "user": "bot"}
    assert client.get("/sdapi/v1/whoami", cookies={"access-token-abc": "tok123"}).json() == {"user": "ann"}
    assert client.get("/sdapi/v1/whoami", cookies={"access-token-abc": "forged"}).status_code == 401
    assert client.get("/sdapi/v1/whoami", headers={"Authorization": "Basic %%%"}).status_code == 401


@pytest.mark.parametrize("headers, allowed", [
    ({"Origin": "https://evil.example"}, False),
    ({"Origin": "null"}, False),
    ({"Origin": "http://localhost:8000"}, False),  # same site, another port: another origin
    ({"Sec-Fetch-Site": "cross-site"}, False),
    ({"Origin": "http://127.0.0.1:7860"}, True),  # the page itself
    ({"Origin": "https://abc.gradio.live"}, True),  # the share link
    ({}, True),  # not a browser
])
def test_cross_site_writes_are_refused_everywhere(headers, allowed):
    client = tiny_app(Guard(), trusted=lambda: {"https://abc.gradio.live"})
    for path, body in (("/sdapi/v1/echo", {"a": 1}), ("/gradio_api/queue/join", {})):
        response = client.post(path, json=body, headers=headers)
        assert (response.status_code == 200) == allowed, (path, headers, response.status_code)
        if not allowed:
            assert response.status_code == 403 and "access-control-allow-origin" not in response.headers
    assert client.get("/sdapi/v1/whoami", headers=headers).status_code == 200  # reading is not changing


def test_bodies_are_capped_and_the_api_takes_json_only():
    client = tiny_app(Guard(max_body_bytes=1000))
    assert client.post("/sdapi/v1/echo", json={"x": "y" * 2000}).status_code == 413
    assert client.post("/sdapi/v1/echo", content=b"x=1", headers={"Content-Type": "application/x-www-form-urlencoded"}
                       ).status_code == 415
    assert client.post("/sdapi/v1/echo", content=b"{}", headers={"Content-Type": "text/plain"}).status_code == 415

    def chunks():
        yield b'{"a": '
        yield b"1}"

    assert client.post("/sdapi/v1/echo", content=chunks(), headers={"Content-Type": "application/json"}
                       ).status_code == 411


def test_the_api_is_off_when_not_enabled():
    assert tiny_app(Guard(api_enabled=False)).get("/sdapi/v1/whoami").status_code == 404


def test_failed_logins_are_limited_per_address_for_the_api_and_the_login_form():
    client = tiny_app(Guard(ui_logins=LOGINS, max_login_failures=3, failure_window=0.5))
    for _ in range(3):
        assert client.get("/sdapi/v1/whoami", headers=basic("ann", "guess")).status_code == 401
    blocked = client.get("/sdapi/v1/whoami", headers=basic("ann", "ann-secret-pw"))
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
    assert client.post("/login", data={"username": "ann", "password": "x"}).status_code == 429
    time.sleep(0.6)
    assert client.get("/sdapi/v1/whoami", headers=basic("ann", "ann-secret-pw")).status_code == 200
    for _ in range(3):
        assert client.post("/login", data={"username": "ann", "password": "x"}).status_code == 400
    assert client.post("/login", data={"username": "ann", "password": "x"}).status_code == 429


# --- in front of the real app ----------------------------------------------------------------------------

PUBLIC = {"/", "/favicon.ico", "/manifest.json", "/robots.txt", "/theme.css"}  # the login page and what it loads


def route_paths(app) -> list[tuple[str, str]]:
    out = []
    for route in app.router.routes:
        path = getattr(route, "path", "")
        methods = getattr(route, "methods", None) or {"GET"}
        for method in sorted(methods - {"HEAD", "OPTIONS"}):
            out.append((method, path.replace("{", "").replace("}", "").replace(":path", "") or "/"))
    return out


def test_every_route_refuses_without_a_login(shared_app):
    url, root, demo = shared_app
    answered = []
    for method, path in route_paths(demo.app):
        if path.startswith(("/static", "/assets", "/svelte")) or path in PUBLIC:  # the page's own scripts and styles
            continue
        response = requests.request(method, url + path, json={} if method != "GET" else None, timeout=20,
                                    allow_redirects=False)
        if response.status_code < 300:
            answered.append((method, path, response.status_code))
    for sub in ("/sdapi/v1/txt2img", "/sdapi/v1/options", "/api/v1/jobs", "/api/v1/openapi.json",
                "/extensions/controlnet/model_list"):
        assert requests.get(url + sub, timeout=20).status_code in (401, 405), sub
    assert answered == []


def test_no_route_echoes_a_secret(shared_app):
    url, _, demo = shared_app
    auth = ("ann", "ann-secret-pw")
    for method, path in route_paths(demo.app):
        if method == "GET" and "{" not in path:
            response = requests.get(url + path, auth=auth, timeout=20)
            assert "ann-secret-pw" not in response.text and "bot-token-0123456789" not in response.text, path
    for sub in ("/sdapi/v1/options", "/sdapi/v1/memory", "/api/v1/models", "/sdapi/v1/openapi.json"):
        text = requests.get(url + sub, auth=auth, timeout=20).text
        assert "secret-pw" not in text and "bot-token" not in text, sub


def long_job(url, auth):
    return requests.post(f"{url}/api/v1/jobs", json={"prompt": "long", "steps": 150, "width": 64, "height": 64,
                                                     "batch_count": 2}, auth=auth, timeout=30).json()


def test_users_see_and_stop_only_their_own_jobs(shared_app):
    url, _, _ = shared_app
    ann, bob = ("ann", "ann-secret-pw"), ("bob", "bob-secret-pw")
    job = long_job(url, ann)
    try:
        deadline = time.monotonic() + 60
        while requests.get(f"{url}/sdapi/v1/progress", auth=ann).json()["state"]["sampling_step"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        theirs = requests.get(f"{url}/sdapi/v1/progress", auth=bob).json()
        assert theirs["state"]["job"] == "" and theirs["current_image"] is None and theirs["progress"] == 0
        assert requests.get(f"{url}/api/v1/jobs/{job['id']}", auth=bob).status_code == 404
        assert requests.delete(f"{url}/api/v1/jobs/{job['id']}", auth=bob).status_code == 404
        assert requests.get(f"{url}/api/v1/jobs", auth=bob).json() == []
        assert requests.post(f"{url}/sdapi/v1/interrupt", auth=bob).status_code == 200  # stops nothing of ann's
        time.sleep(0.5)
        assert requests.get(f"{url}/api/v1/jobs/{job['id']}", auth=ann).json()["state"] == "running"
    finally:
        requests.delete(f"{url}/api/v1/jobs/{job['id']}", auth=ann)


def test_a_full_queue_answers_429_with_a_clear_message(shared_app):
    url, _, _ = shared_app
    bot = ("bot", "bot-token-0123456789")
    jobs = [long_job(url, bot)]
    try:
        for _ in range(3):  # queue_per_user=3 waiting jobs; the first one may already be running
            jobs.append(long_job(url, bot))
        refused = requests.post(f"{url}/api/v1/jobs", json={"prompt": "more", **SMALL}, auth=bot)
        assert refused.status_code == 429 and refused.headers["retry-after"]
        assert "You already have 3 jobs waiting" in refused.json()["error"]["message"]
        # another user still gets in
        other = requests.post(f"{url}/api/v1/jobs", json={"prompt": "mine", **SMALL}, auth=("ann", "ann-secret-pw"))
        assert other.status_code == 202
        requests.delete(f"{url}/api/v1/jobs/{other.json()['id']}", auth=("ann", "ann-secret-pw"))
    finally:
        for job in jobs:
            if "id" in job:
                requests.delete(f"{url}/api/v1/jobs/{job['id']}", auth=bot)


def test_the_real_login_form_is_limited_too(tmp_path):
    """Gradio's own login form, through the app's middleware (its own app: the limit blocks this address)."""
    from .conftest import start

    url, demo = start(tmp_path, auth=(("ann", "ann-secret-pw"),))
    try:
        codes = [requests.post(f"{url}/login", data={"username": "ann", "password": f"guess{i}"}, timeout=30).status_code
                 for i in range(11)]
        assert all(400 <= c < 500 and c != 429 for c in codes[:10]) and codes[10] == 429
        blocked = requests.post(f"{url}/login", data={"username": "ann", "password": "ann-secret-pw"}, timeout=30)
        assert blocked.status_code == 429  # even the right password waits
    finally:
        demo.close()
