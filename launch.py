"""The one entry point: set up what is missing, then run.

    python launch.py [options]  set up the environment, then start the web UI (--help lists the options)
    python launch.py --test     set up the environment with test dependencies, then run the tests
    python launch.py generate   the command line generator (python -m webui generate --help)

Set-up creates (or reuses) a virtual environment in `.venv`, installs torch with an EXACT pin
(`torch==2.13.0`, or the spec in the WEBUI_TORCH_SPEC environment variable) and everything else
from pyproject.toml, constrained so that no other torch can ever be pulled in. It is skipped when
nothing has changed since the last run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
DEFAULT_TORCH_SPEC = "torch==2.13.0"


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def torch_spec() -> str:
    spec = os.environ.get("WEBUI_TORCH_SPEC", DEFAULT_TORCH_SPEC).strip()
    if "==" not in spec:
        sys.exit(f"WEBUI_TORCH_SPEC must pin an exact version (like {DEFAULT_TORCH_SPEC}), not {spec!r}")
    return spec


def ensure_environment(extras: str) -> Path:
    """Create or update .venv so it has torch (pinned) and the project with `extras`."""
    python = venv_python()
    if not python.exists():
        print(f"Creating a virtual environment in {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    spec = torch_spec()
    stamp_file = VENV / f".webui-setup-{extras or 'app'}"
    stamp = hashlib.sha256(f"{spec}|{extras}|{(ROOT / 'pyproject.toml').read_bytes().hex()}".encode()).hexdigest()
    if stamp_file.exists() and stamp_file.read_text() == stamp:
        return python
    constraints = VENV / "constraints.txt"
    constraints.write_text(spec + "\n")
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-c", str(constraints)]
    print(f"Installing {spec} ...", flush=True)
    subprocess.run([*pip, spec], check=True)
    target = f".[{extras}]" if extras else "."
    print(f"Installing the project and its dependencies ({target}) ...", flush=True)
    subprocess.run([*pip, "-e", target], check=True, cwd=ROOT)
    stamp_file.write_text(stamp)
    return python


def ensure_browser() -> None:
    """Browser tests drive the system Chromium; install it from Debian's packages when we can (root + apt)."""
    if shutil.which("chromium") or Path("/usr/bin/chromium").exists():
        return
    if os.name == "posix" and os.geteuid() == 0 and shutil.which("apt-get"):
        print("Installing Chromium for the browser tests (Debian packages chromium, chromium-driver) ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver", "fonts-liberation"],
                       check=False, env=env)
        return
    print("Chromium is not installed: the browser tests will be skipped "
          "(install the 'chromium' package to run them).", flush=True)


def in_project_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def main(argv: list[str]) -> int:
    if argv[:1] == ["--test"]:
        python = ensure_environment("test")
        ensure_browser()
        return subprocess.call([str(python), "-m", "pytest", *argv[1:]], cwd=ROOT)
    python = ensure_environment("")
    if not in_project_venv():
        return subprocess.call([str(python), str(ROOT / "launch.py"), *argv], cwd=ROOT)
    if argv[:1] in (["generate"], ["models"]):
        from webui.__main__ import main as cli_main

        return cli_main(argv)
    from webui.app import main as app_main

    return app_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
