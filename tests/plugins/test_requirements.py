"""Extension requirements: what pip would install, refused pip options and torch changes, confirmation."""

import importlib.metadata
import subprocess
from pathlib import Path

import pytest

from webui.plugins.install import install_requirements, requirements_plan
from webui.plugins.manifest import ExtensionError, Manifest

TORCH_VERSION = importlib.metadata.version("torch")


def ext(*requirements: str) -> Manifest:
    return Manifest("demo", "1", "", (1, 0), requirements)


@pytest.mark.parametrize("requirement, expected", [
    ("torch", "may not install or change torch"), ("torch>=2.0", "exact pin"), ("torch==1.13.1", "exact pin"),
    ("torch==2.*", "exact pin"), ("Torch_Vision", "torchvision"), ("torchaudio==2.0", "torchaudio"),
    ("--index-url x", "pip options"), ("-e .", "pip options"), ("-r other.txt", "pip options"),
    ("numpy --hash=sha256:00", "PEP 508"), ("./local/package", "PEP 508"), ("/abs/pkg", "PEP 508"),
    ("pkg @ https://example.com/pkg.whl", "URL"), ("pkg @ file:///tmp/pkg", "URL"),
    ("numpy>=1; os.system('x')", "PEP 508"),
])
def test_requirements_plan_refuses(requirement, expected):
    with pytest.raises(ExtensionError, match="requirements") as info:
        requirements_plan(ext("numpy>=1", requirement))
    assert expected in str(info.value) and info.value.extension == "demo"


def test_requirements_plan_accepts_plain_requirements_and_the_exact_torch_pin():
    plan = requirements_plan(ext("numpy>=1", "Pillow[extra]>=10,<13", 'scipy; python_version>="3.10"', "numpy>=1",
                                 f"torch=={TORCH_VERSION}"))
    assert plan == ["numpy>=1", "Pillow[extra]<13,>=10", 'scipy; python_version >= "3.10"', f"torch=={TORCH_VERSION}"]


def test_install_requirements_needs_confirmation():
    calls = []
    with pytest.raises(ExtensionError, match="confirmation.*numpy>=1"):
        install_requirements(ext("numpy>=1"), confirmed=False, runner=lambda *a, **k: calls.append(a))
    assert calls == []


def test_install_requirements_pins_the_installed_torch():
    seen = {}

    def fake_runner(command, **kwargs):
        seen["command"] = command
        seen["constraints"] = Path(command[command.index("--constraint") + 1]).read_text()
        seen["kwargs"] = kwargs
        return subprocess.CompletedProcess(command, 0, "", "")

    plan = install_requirements(ext("numpy>=1", "requests"), confirmed=True, python="/venv/python", runner=fake_runner)
    assert plan == ["numpy>=1", "requests"]
    command = seen["command"]
    assert command[:4] == ["/venv/python", "-m", "pip", "install"] and command[-3:] == ["--", "numpy>=1", "requests"]
    assert f"torch=={TORCH_VERSION}\n" in seen["constraints"].splitlines(keepends=True)
    assert seen["kwargs"].get("shell") is None and seen["kwargs"]["timeout"] > 0
    assert not Path(command[command.index("--constraint") + 1]).exists()  # the temporary file is cleaned up


def test_install_requirements_reports_pip_failure_and_skips_empty_plans():
    def failing(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: no matching distribution")

    with pytest.raises(ExtensionError, match="exit 1.*no matching distribution"):
        install_requirements(ext("numpy>=1"), confirmed=True, runner=failing)
    assert install_requirements(ext(), confirmed=True, runner=failing) == []
