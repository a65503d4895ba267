"""The README's run command on a clean copy of the project: it builds its own virtual environment,
installs what is missing, and serves the UI at the printed address."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from safetensors.torch import save_file

from .engine.models.tiny_checkpoints import Recipe, make_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_python_launch_py_starts_the_app_from_a_clean_environment(tmp_path):
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    copy = tmp_path / "webui"
    for name in files:
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    save_file(make_checkpoint(Recipe("sd1"), seed=3), str(copy / "models" / "checkpoints" / "tiny.safetensors"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    process = subprocess.Popen([sys.base_prefix + "/bin/python3" if os.name != "nt" else sys.executable,
                                "launch.py", "--port", str(port)], cwd=copy, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # launch.py runs the app in a child: stop the whole group
    output = []
    try:
        deadline = time.monotonic() + 900  # a fresh environment installs torch, gradio, transformers ...
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
            output.append(line)
            if f"Running on http://127.0.0.1:{port}" in line:
                break
        assert any(f"Running on http://127.0.0.1:{port}" in line for line in output), "".join(output[-40:])
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).read().decode()
        assert "gradio" in page.lower()
        assert (copy / ".venv").is_dir()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
