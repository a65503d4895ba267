"""The extension system: hook specifications, discovery, and the manager that calls extensions safely.

Extensions import what they need from here: `hookimpl` and the API's data types.
"""

from webui.plugins.api import ControlsSpec, ExtensionContext, Route, StepInfo, TabSpec, hookimpl

__all__ = ["ControlsSpec", "ExtensionContext", "Route", "StepInfo", "TabSpec", "hookimpl"]
