"""Composition root: command line -> objects -> launch. The ONLY place long-lived objects are created."""

from __future__ import annotations

import os
import sys
from urllib.parse import urlsplit

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no version check or telemetry calls
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from webui.config import ConfigError, LaunchOptions, SettingsStore, parse_options  # noqa: E402


def build_service(options: LaunchOptions):
    """Everything but the UI: models, settings, presets, the model store and the job queue."""
    from webui.engine.memory.devices import choose_device
    from webui.engine.models.depth_estimator import DepthEstimatorStore
    from webui.engine.models.store import ModelStore
    from webui.paths import ModelLibrary
    from webui.presets import load_presets
    from webui.service import WebUIService
    from webui.uploads import configure_pillow

    configure_pillow()  # Pillow refuses over-large images everywhere (Gradio's uploads too)
    settings = SettingsStore(options.settings_file)
    library = ModelLibrary(options.models_dir)
    device = choose_device(options.device if options.device != "auto" else settings.current.device)
    depth = DepthEstimatorStore(
        lambda: [library.path("depth", name) for name in library.names("depth")],
        lambda: options.models_dir / "depth" if settings.current.depth_download else None, device)
    extensions = build_extensions(options, library, depth)
    service = WebUIService(options, library, ModelStore(), settings, load_presets(options.presets_dir), extensions,
                           device=device, depth=depth)
    print(f"Memory: {service.memory_policy().describe()}")
    return service


def build_extensions(options: LaunchOptions, library, depth):
    """Load the built-in and installed extensions; a broken one is reported and skipped."""
    from webui.config import ROOT
    from webui.plugins.manager import ExtensionManager, ExtensionState

    state_dir = options.settings_file.parent
    manager = ExtensionManager(
        builtin_dir=ROOT / "extensions" / "builtin", extensions_dir=options.extensions_dir,
        data_dir=state_dir / "extension-data", models_dir=options.models_dir,
        state=ExtensionState(state_dir / "extensions-state.json"),
        services={"model_names": library.names, "model_path": library.path, "estimate_depth": depth.depth_image},
    )
    manager.load()
    for record in manager.records:
        if record.error:
            print(f"Extension {record.name}: {record.status}: {record.error}")
    return manager


# Gradio follows the system's light/dark preference; these force one (it reads the `dark` class on <body>).
THEME_JS = {
    "dark": "() => { document.body.classList.add('dark'); }",
    "light": "() => { document.body.classList.remove('dark'); }",
}


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def launch(options: LaunchOptions, *, block: bool = True):
    """Build the app and serve it; returns the Gradio Blocks (still serving when block=False)."""
    from webui.api import mount_api, security_middleware
    from webui.api.security import Guard
    from webui.plugins.routes import mount_extension_routes
    from webui.ui.app_ui import build_ui

    service = build_service(options)
    if not service.checkpoints():
        print(f"No checkpoint found in {options.models_dir / 'checkpoints'}: put a .safetensors model there "
              "(SD 1.x / 2.x) and press the refresh button next to the checkpoint list.")
    if options.exposed and not options.auth:
        print("WARNING: running WITHOUT a login while exposed (--insecure-no-auth): anyone who can reach this "
              "address can use it.")
    demo = build_ui(service)
    demo.service = service  # for callers that drive the app from Python (tests)
    demo.queue(max_size=64, default_concurrency_limit=1)
    guard = Guard(ui_logins=options.auth, api_logins=options.api_auth, api_enabled=options.api_enabled,
                  max_body_bytes=options.max_body_mb << 20)
    # Gradio's session tokens (token -> user) and the share link exist only once it serves: asked at each request.
    middleware = security_middleware(guard, tokens=lambda: getattr(getattr(demo, "app", None), "tokens", None) or {},
                                     trusted_origins=lambda: {_origin(demo.share_url)} if demo.share_url else set())
    demo.launch(
        server_name=options.server_name,
        server_port=options.port,
        share=options.share,
        auth=list(options.auth) or None,
        show_error=True,
        prevent_thread_lock=True,
        js=THEME_JS.get(options.theme),
        quiet=True,
        footer_links=["api", "settings"],
        run_history=False,  # Gradio would otherwise offer to upload runs to a Hugging Face bucket
        enable_monitoring=False,  # /monitoring is on by default
        max_file_size=f"{options.max_body_mb}mb",
        # Gradio's routes are described by /gradio_api/info (behind its login), not by an open OpenAPI page.
        app_kwargs={"middleware": [middleware], "openapi_url": None, "docs_url": None, "redoc_url": None},
    )
    if options.api_enabled:
        for path in mount_api(demo.app, service):
            print(f"REST API: {path} (OpenAPI schema at {path}/openapi.json)")
    if service.manager is not None:
        for path in mount_extension_routes(demo.app, service.manager):
            print(f"Extension route: {path}")
    print(f"Running on http://{'127.0.0.1' if not options.listen else '0.0.0.0'}:{options.port}", flush=True)
    if options.share:
        if demo.share_url:
            print(f"Public link: {demo.share_url}", flush=True)
        else:
            print("Could not create the public share link (no internet connection, or the tunnel service is "
                  "unreachable). Still serving locally.", flush=True)
    if block:
        try:
            demo.block_thread()
        except KeyboardInterrupt:
            pass
        finally:
            service.jobs.stop()
            demo.close()
    return demo


def main(argv: list[str] | None = None) -> int:
    try:
        options = parse_options(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    launch(options)
    return 0
