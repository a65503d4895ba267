"""Extensions through the app's service: install from a local git repository, restart, see the tab and
controls, generate with the extension's parameters; the exposed-server rule; bad URLs; removal; enable."""

import json
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import save_file

from webui.app import build_service
from webui.config import LaunchOptions
from webui.errors import RequestError, WebUIError
from webui.plugins import ControlsSpec, TabSpec

from ..engine.models.tiny_checkpoints import Recipe, make_checkpoint

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT = "tiny.safetensors"
SMALL = dict(prompt="a red circle", width=64, height=64, steps=2, seed=11)
MAGENTA = (255, 0, 255)

STAMP = textwrap.dedent('''
    """Marks images whose request has a label: a magenta top-left pixel and a "Stamp" infotext field."""

    from webui.plugins import ControlsSpec, TabSpec, hookimpl


    def label(request, context):
        return request.extensions.get(context.name, {}).get("label")


    @hookimpl
    def ui_tabs():
        return [TabSpec("Stamp", lambda: None)]


    @hookimpl
    def ui_controls(tab):
        return ControlsSpec("Stamp", lambda: {}) if tab == "txt2img" else None


    @hookimpl
    def postprocess_image(image, request, context):
        if not label(request, context):
            return None
        image = image.copy()
        image.putpixel((0, 0), (255, 0, 255))
        return image


    @hookimpl
    def infotext_fields(request, context):
        return {"Stamp": label(request, context)} if label(request, context) else None


    @hookimpl
    def read_infotext(params):
        return {"label": params["Stamp"]} if "Stamp" in params else None
''')


def manifest(version: str = "1.0.0") -> str:
    return f'name: stamp\nversion: "{version}"\ndescription: Stamps labelled images\napi_version: "1.0"\n'


def git(cwd: Path, *args: str) -> str:
    config = ["-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "init.defaultBranch=main",
              "-c", "commit.gpgsign=false"]
    return subprocess.run(["git", *config, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (repo / name).write_text(text, encoding="utf-8")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "change")


@pytest.fixture
def repo(tmp_path) -> Path:
    path = tmp_path / "src" / "Stamp-Extension"
    path.mkdir(parents=True)
    git(path, "init", "-q")
    commit(path, {"extension.yaml": manifest(), "__init__.py": STAMP})
    return path


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    (root / "checkpoints").mkdir()
    save_file(make_checkpoint(Recipe("sd1"), seed=1), str(root / "checkpoints" / CHECKPOINT))
    return root


@pytest.fixture
def start(tmp_path, models_dir):
    """start(**options) builds the app's service (again: a restart) on this test's folders."""
    services = []

    def build(**options):
        service = build_service(LaunchOptions(
            models_dir=models_dir, outputs_dir=tmp_path / "outputs", settings_file=tmp_path / "s.json",
            extensions_dir=tmp_path / "extensions", presets_dir=ROOT / "presets", precision="fp32", **options))
        services.append(service)
        return service

    yield build
    for service in services:
        service.jobs.stop()


def rows(service) -> dict[str, dict]:
    return {row["name"]: row for row in service.extensions()}


def generate(service, **extensions):
    job = service.submit("ann", CHECKPOINT, None, {**SMALL, "extensions": extensions})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = service.status("ann", job)
        if status.finished:
            assert status.state == "done", status.error
            return status
        time.sleep(0.05)
    raise TimeoutError(job)


def test_an_installed_extension_loads_after_a_restart_and_takes_part_in_generation(start, repo, tmp_path):
    service = start()
    assert service.install_extension(str(repo)) == "Installed stamp 1.0.0. Restart the app to load it."
    assert (tmp_path / "extensions" / "stamp" / "__init__.py").read_text() == STAMP
    assert "stamp" not in rows(service)  # loaded only at the next start

    service = start()  # the restart
    assert rows(service)["stamp"] == {"name": "stamp", "version": "1.0.0", "source": "installed", "status": "loaded",
                                      "error": None, "description": "Stamps labelled images"}
    assert {"lora", "prompt_weighting"} <= set(rows(service))  # the built-ins load beside it
    tabs = [(name, spec.title) for name, spec in service.extension_tabs() if isinstance(spec, TabSpec)]
    assert ("stamp", "Stamp") in tabs
    controls = service.extension_controls("txt2img")
    assert ("stamp", "Stamp") in [(name, spec.title) for name, spec in controls]
    assert all(isinstance(spec, ControlsSpec) for _, spec in controls)
    assert "stamp" not in [name for name, _ in service.extension_controls("img2img")]

    stamped = generate(service, stamp={"label": "hello"})
    plain = generate(service)
    assert stamped.notices == [] and plain.notices == []
    assert "Stamp: hello" in stamped.infotexts[0] and "Stamp" not in plain.infotexts[0]
    assert stamped.images[0].getpixel((0, 0)) == MAGENTA and plain.images[0].getpixel((0, 0)) != MAGENTA
    text, values = service.read_infotext(Image.open(stamped.paths[0]))
    assert "Stamp: hello" in text and values["extensions"] == {"stamp": {"label": "hello"}}


def test_updates_are_found_and_applied_through_the_service(start, repo):
    start().install_extension(str(repo))
    service = start()
    assert service.check_extension_updates() == [{"name": "stamp", "behind": False, "error": None}]
    commit(repo, {"extension.yaml": manifest("1.1.0")})
    assert service.check_extension_updates() == [{"name": "stamp", "behind": True, "error": None}]
    assert service.update_extension("stamp") == "Updated stamp to 1.1.0. Restart the app to load the new version."
    assert rows(start())["stamp"]["version"] == "1.1.0"
    with pytest.raises(RequestError, match="an installed community extension"):
        service.update_extension("lora")


@pytest.mark.parametrize("exposure", [{"listen": True}, {"share": True}])
def test_an_exposed_app_refuses_to_install_update_or_remove(start, repo, tmp_path, exposure):
    logins = {"auth": (("u", "p"),)}
    allowed = start(**exposure, **logins, enable_insecure_extension_access=True)
    assert allowed.extension_access()
    assert allowed.install_extension(str(repo)).startswith("Installed stamp")

    exposed = start(**exposure, **logins)
    assert not exposed.extension_access() and rows(exposed)["stamp"]["status"] == "loaded"
    for action in (lambda: exposed.install_extension(str(repo)), lambda: exposed.update_extension("stamp"),
                   lambda: exposed.uninstall_extension("stamp"), exposed.check_extension_updates,
                   lambda: exposed.install_extension_requirements("stamp", True)):
        with pytest.raises(WebUIError, match="--enable-insecure-extension-access"):
            action()
    assert (tmp_path / "extensions" / "stamp" / "__init__.py").is_file()
    # Enabling would run an installed extension's code at the next start: refused too, as A1111 does.
    with pytest.raises(WebUIError, match="--enable-insecure-extension-access"):
        exposed.set_extension_enabled("stamp", False)


@pytest.mark.parametrize("url", ["ext::sh -c x", "-u", "http://x/y", "ssh://host/repo", "relative/path", ""])
def test_bad_urls_are_refused_with_a_message_naming_the_url(start, tmp_path, url):
    service = start()
    with pytest.raises(WebUIError) as caught:
        service.install_extension(url)
    assert str(caught.value).startswith("url: ") and "is not allowed" in str(caught.value)
    extensions = tmp_path / "extensions"
    assert not extensions.exists() or list(extensions.iterdir()) == []


def test_uninstall_removes_the_extension(start, repo, tmp_path):
    start().install_extension(str(repo))
    service = start()
    assert service.uninstall_extension("stamp") == "Removed stamp. Restart the app to unload it."
    assert not (tmp_path / "extensions" / "stamp").exists()
    assert "stamp" not in rows(start())
    for name in ("stamp", "lora", "../s.json"):  # gone, built-in, not a name
        with pytest.raises(WebUIError):
            service.uninstall_extension(name)
    assert (ROOT / "extensions" / "builtin" / "lora" / "__init__.py").is_file()


def test_disabling_through_the_service_persists_across_restarts(start, repo, tmp_path):
    start().install_extension(str(repo))
    service = start()
    assert service.set_extension_enabled("stamp", False) == "stamp will be disabled when the app restarts."
    assert json.loads((tmp_path / "extensions-state.json").read_text()) == {"disabled": ["stamp"]}
    assert rows(service)["stamp"]["status"] == "loaded (disabled at next start)"

    service = start()
    assert rows(service)["stamp"]["status"] == "disabled"
    assert "stamp" not in [name for name, _ in service.extension_tabs()]
    assert "stamp" not in [name for name, _ in service.extension_controls("txt2img")]
    status = generate(service, stamp={"label": "hello"})
    assert "Stamp" not in status.infotexts[0] and status.images[0].getpixel((0, 0)) != MAGENTA

    assert service.set_extension_enabled("stamp", True) == "stamp will be enabled when the app restarts."
    service = start()
    assert rows(service)["stamp"]["status"] == "loaded"
    assert "Stamp: hello" in generate(service, stamp={"label": "hello"}).infotexts[0]
    with pytest.raises(WebUIError, match="no extension is named 'nothing'"):
        service.set_extension_enabled("nothing", True)
