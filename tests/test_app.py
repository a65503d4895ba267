"""The real app (real service, tiny model) behind a login: every route refuses without credentials."""

import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from safetensors.torch import save_file

from webui.app import launch
from webui.config import LaunchOptions

from .engine.models.tiny_checkpoints import Recipe, make_checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("authapp")
    (root / "models" / "checkpoints").mkdir(parents=True)
    save_file(make_checkpoint(Recipe("sd1"), seed=1), str(root / "models" / "checkpoints" / "tiny.safetensors"))
    hello = root / "extensions" / "hello"  # an extension with an HTTP route
    hello.mkdir(parents=True)
    (hello / "extension.yaml").write_text("name: hello\nversion: '1'\napi_version: '1.0'\n")
    (hello / "__init__.py").write_text(
        "from webui.plugins import Route, hookimpl\n"
        "@hookimpl\ndef api_routes():\n    return [Route('GET', 'ping', lambda: {'pong': True})]\n")
    port = free_port()
    options = LaunchOptions(port=port, auth=(("ann", "s3cret-pw"),), models_dir=root / "models",
                            extensions_dir=root / "extensions",
                            outputs_dir=root / "outputs", settings_file=root / "settings.json",
                            presets_dir=Path(__file__).resolve().parent.parent / "presets", precision="fp32")
    demo = launch(options, block=False)
    yield f"http://127.0.0.1:{port}"
    demo.close()


def status_of(url: str, data: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize(("path", "data"), [
    ("/config", None),
    ("/gradio_api/info", None),
    ("/gradio_api/call/txt2img", b'{"data": []}'),
    ("/gradio_api/queue/join", b'{"data": [], "fn_index": 0, "session_hash": "x"}'),
    ("/gradio_api/file=/etc/passwd", None),
    ("/gradio_api/upload", b"x"),
    ("/extensions/hello/ping", None),
])
def test_routes_refuse_without_login(app, path, data):
    assert status_of(app + path, data) in (401, 403)


def test_extension_routes_take_the_same_login(app):
    import base64
    import json

    request = urllib.request.Request(app + "/extensions/hello/ping", headers={
        "Authorization": "Basic " + base64.b64encode(b"ann:s3cret-pw").decode()})
    with urllib.request.urlopen(request, timeout=20) as response:
        assert json.loads(response.read()) == {"pong": True}
    wrong = urllib.request.Request(app + "/extensions/hello/ping", headers={
        "Authorization": "Basic " + base64.b64encode(b"ann:wrong").decode()})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(wrong, timeout=20)
    assert refused.value.code == 401


def test_the_page_is_the_login_form_and_leaks_nothing(app):
    page = urllib.request.urlopen(app + "/", timeout=20).read().decode()
    assert "s3cret-pw" not in page


def test_client_needs_the_login_and_then_generates(app):
    from gradio_client import Client

    with pytest.raises(Exception):
        Client(app, verbose=False, analytics_enabled=False)
    client = Client(app, auth=("ann", "s3cret-pw"), verbose=False, analytics_enabled=False)
    gallery, infotext, *_ = client.predict(prompt="a cat", width=64, height=64, steps=2, seed=3, api_name="/txt2img")
    assert len(gallery) == 1 and "Seed: 3" in infotext
    *_, error = client.predict(prompt="a cat", width=65, height=64, steps=2, api_name="/txt2img")
    assert "width" in str(error) and "multiple of 8" in str(error)
