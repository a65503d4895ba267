"""Finding extensions: folders under extensions/builtin/ and extensions/, and installed packages that
declare the `webui.extensions` entry-point group. Each has an `extension.yaml` manifest beside its code.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from webui.plugins.manifest import MANIFEST_FILE, ExtensionError

ENTRY_POINT_GROUP = "webui.extensions"
MODULE_PREFIX = "webui_extension_"  # extension folders are imported as webui_extension_<name>


@dataclass(frozen=True)
class Candidate:
    """Something that may be an extension, before its manifest is read or its code imported."""

    folder: Path  # holds extension.yaml (and, for folder extensions, __init__.py)
    source: str  # "builtin", "installed" or "package"
    entry_point: importlib.metadata.EntryPoint | None = None
    error: str | None = None  # why it could not even be located (e.g. its package raised on import)


def find_candidates(builtin_dir: Path | None, extensions_dir: Path | None) -> list[Candidate]:
    """Built-ins first, then installed folders and packages, each group in alphabetical order."""
    found = [Candidate(f, "builtin") for f in _folders(builtin_dir)]
    found += [Candidate(f, "installed") for f in _folders(extensions_dir) if f.name != "builtin"]
    for entry_point in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:  # finding a dotted module imports its parent package, which may fail
            spec = importlib.util.find_spec(entry_point.module)
        except Exception as exc:  # a broken package must not stop the app
            found.append(Candidate(Path(entry_point.name), "package", entry_point,
                                   f"its package could not be imported: {type(exc).__name__}: {exc}"))
            continue
        origin = spec.origin if spec is not None else None
        folder = Path(origin).parent if origin else Path(entry_point.module)
        found.append(Candidate(folder, "package", entry_point))
    return found


def _folders(root: Path | None) -> list[Path]:
    if root is None or not root.is_dir():
        return []
    # Hidden folders are skipped: the installer stages clones in .installing-* folders.
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def import_extension(candidate: Candidate, name: str) -> ModuleType:
    """The extension's module. Folder extensions are imported from their `__init__.py` as a package, so
    they may use relative imports of their own files."""
    if candidate.entry_point is not None:
        return importlib.import_module(candidate.entry_point.module)
    init = candidate.folder / "__init__.py"
    if not init.is_file():
        raise ExtensionError(f"{candidate.folder} has no __init__.py (the extension's module)", extension=name)
    module_name = MODULE_PREFIX + name.replace("-", "_")
    spec = importlib.util.spec_from_file_location(module_name, init, submodule_search_locations=[str(candidate.folder)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def forget_extension(name: str) -> None:
    """Drop a folder extension's modules from `sys.modules` (before importing it again on reload)."""
    module_name = MODULE_PREFIX + name.replace("-", "_")
    for key in [k for k in sys.modules if k == module_name or k.startswith(module_name + ".")]:
        del sys.modules[key]

