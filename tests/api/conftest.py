"""The real app (real service and engine, tiny random-weight models) served on loopback, for the REST API tests."""

from __future__ import annotations

import base64
import io
import socket
from pathlib import Path

import pytest
import requests
from PIL import Image
from safetensors.torch import save_file

from webui.app import launch
from webui.config import LaunchOptions

from ..engine.models.tiny_checkpoints import Recipe, make_checkpoint
from ..extensions.builtin.controlnet.tiny import make_controlnet

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"width": 64, "height": 64, "steps": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_models(root: Path) -> Path:
    models = root / "models"
    for kind in ("checkpoints", "controlnet", "loras"):
        (models / kind).mkdir(parents=True, exist_ok=True)
    save_file(make_checkpoint(Recipe("sd1"), seed=1), str(models / "checkpoints" / "tiny.safetensors"))
    save_file(make_checkpoint(Recipe("sd1", "inpaint"), seed=2), str(models / "checkpoints" / "v1-inpaint.safetensors"))
    save_file(make_controlnet(Recipe("sd1"), seed=3), str(models / "controlnet" / "edges.safetensors"))
    return models


def start(root: Path, **options) -> tuple[str, object]:
    port = free_port()
    models = make_models(root)
    # Never reach for the internet from tests (the depth estimator would be downloaded when missing).
    (root / "settings.json").write_text('{"depth_download": false}')
    launch_options = LaunchOptions(port=port, models_dir=models, outputs_dir=root / "outputs",
                                   settings_file=root / "settings.json", extensions_dir=root / "extensions",
                                   presets_dir=ROOT / "presets", precision="fp32", **options)
    demo = launch(launch_options, block=False)
    return f"http://127.0.0.1:{port}", demo


@pytest.fixture(scope="package")
def local_app(tmp_path_factory):
    """No logins: this computer alone, as `python launch.py` runs by default."""
    root = tmp_path_factory.mktemp("api-local")
    url, demo = start(root)
    yield url, root
    demo.close()


@pytest.fixture(scope="package")
def shared_app(tmp_path_factory):
    """Logins for two people through the UI's --auth, and an API-only bot with a token (--api-auth)."""
    root = tmp_path_factory.mktemp("api-shared")
    url, demo = start(root, auth=(("ann", "ann-secret-pw"), ("bob", "bob-secret-pw")),
                      api_auth=(("bot", "bot-token-0123456789"),), queue_per_user=3, max_body_mb=2)
    yield url, root, demo
    demo.close()


def b64(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def unb64(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    image.load()
    return image


def session(user: str | None = None, password: str | None = None) -> requests.Session:
    s = requests.Session()
    if user:
        s.auth = (user, password)
    return s
