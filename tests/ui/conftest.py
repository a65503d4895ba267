"""Shared helpers for the UI tests: analytics off, a free port, launching the app with the fake services."""

from __future__ import annotations

import os
import socket

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before anything imports gradio
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "browser: drives the UI in headless Chromium (Playwright)")
    # gradio 6.31's queue calls pandas options that pandas 3 deprecates; not ours to fix.
    config.addinivalue_line("filterwarnings", "ignore:'future.no_silent_downcasting' is deprecated")
    config.addinivalue_line("filterwarnings", "ignore:The copy keyword is deprecated")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(services):
    """Build and serve the UI on 127.0.0.1; returns (demo, url). The caller closes the demo."""
    from webui.ui.app_ui import build_ui

    demo = build_ui(services, title="webui test")
    demo.queue(max_size=16, default_concurrency_limit=1)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                footer_links=["api", "settings"], run_history=False, enable_monitoring=False)
    return demo, f"http://127.0.0.1:{port}/"


import pytest  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can react to failures (screenshots)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
