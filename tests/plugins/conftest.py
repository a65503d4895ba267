"""Shared fixtures of the extension-system tests."""

import sys

import pytest

from webui.plugins.discovery import MODULE_PREFIX


@pytest.fixture(autouse=True)
def forget_extension_modules():
    """Each test imports its extensions afresh: drop the modules the test's extensions added."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(MODULE_PREFIX):
            del sys.modules[name]
