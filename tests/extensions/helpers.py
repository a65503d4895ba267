"""Shared set-up for tests that run generations with the built-in extensions."""

from __future__ import annotations

from pathlib import Path

from webui.paths import ModelLibrary
from webui.plugins.manager import ExtensionManager

ROOT = Path(__file__).resolve().parents[2]


def load_builtin_extensions(models_dir: Path, data_dir: Path, estimate_depth=None) -> ExtensionManager:
    """The built-in extensions, loaded, finding models by name in `models_dir` (as the app wires them);
    `estimate_depth(image)`: the depth estimator lent to them (image -> "L" depth picture), if any."""
    library = ModelLibrary(models_dir)
    services = {"model_names": library.names, "model_path": library.path}
    if estimate_depth is not None:
        services["estimate_depth"] = estimate_depth
    manager = ExtensionManager(builtin_dir=ROOT / "extensions" / "builtin", extensions_dir=None,
                               data_dir=data_dir, models_dir=models_dir, services=services)
    manager.load()
    return manager
