"""Extension manifests: `extension.yaml` in an extension's folder, read and validated.

A manifest looks like

    name: my_extension          # lower-case; also the namespace of its request parameters
    version: "1.2.0"
    description: What it does, in one line
    api_version: "1.0"          # the extension API it was written for
    requirements:               # optional; pip requirements, installed only after confirmation
      - numpy>=1.26

An unknown key, a missing required key or a value of the wrong kind is an error naming the file, the
field and what is allowed, so a broken extension is reported instead of half-loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from webui.errors import WebUIError

API_VERSION: tuple[int, int] = (1, 1)  # the extension API this app offers: (major, minor)
MANIFEST_FILE = "extension.yaml"
MAX_MANIFEST_BYTES = 64 * 1024  # a manifest is a few lines; anything bigger is not one
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
NAME_RULE = "1-64 characters: lower-case letters, digits, '_' or '-', starting with a letter or digit"
REQUIRED_KEYS = ("name", "version", "api_version")
OPTIONAL_KEYS = ("description", "requirements")
_API_VERSION_PATTERN = re.compile(r"(\d+)(?:\.(\d+))?")


class ExtensionError(WebUIError):
    """An extension, manifest, install URL or requirement that is not allowed; the message says what is."""

    def __init__(self, problem: str, *, extension: str | None = None, field: str | None = None) -> None:
        self.problem = problem
        self.extension = extension
        self.field = field
        prefix = "".join(f"{part}: " for part in (extension, field) if part)
        super().__init__(prefix + problem)


@dataclass(frozen=True)
class Manifest:
    """An extension's validated `extension.yaml`; `folder` is where it was read from."""

    name: str
    version: str
    description: str
    api_version: tuple[int, int]
    requirements: tuple[str, ...] = ()
    folder: Path | None = None


def shown(value: object) -> str:
    """A value for an error message: its repr, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def is_valid_name(name: object) -> bool:
    return isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None


def check_name(name: object, *, where: str | None = None, field: str = "name") -> str:
    """`name` if it is a valid extension name, else an ExtensionError naming the field."""
    if not is_valid_name(name):
        raise ExtensionError(f"{shown(name)} is not allowed; expected {NAME_RULE}", extension=where, field=field)
    return name  # type: ignore[return-value]  # checked by is_valid_name


def parse_api_version(value: object, *, where: str | None = None) -> tuple[int, int]:
    """`1`, `"1"`, `1.0` or `"1.0"` -> (1, 0); anything else is an error."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        match = None
    else:
        match = _API_VERSION_PATTERN.fullmatch(str(value).strip())
    if match is None:
        raise ExtensionError(
            f"{shown(value)} is not allowed; expected MAJOR or MAJOR.MINOR, e.g. \"1.0\"",
            extension=where, field="api_version",
        )
    return int(match.group(1)), int(match.group(2) or 0)


def read_manifest(folder: Path) -> Manifest:
    """The validated manifest of the extension in `folder`."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    where = str(path)
    data = _load_yaml(path, where)
    unknown = sorted(str(key) for key in data if key not in REQUIRED_KEYS + OPTIONAL_KEYS)
    if unknown:
        allowed = ", ".join(REQUIRED_KEYS + OPTIONAL_KEYS)
        raise ExtensionError(f"unknown key(s) {', '.join(unknown)} (allowed: {allowed})", extension=where)
    missing = [key for key in REQUIRED_KEYS if data.get(key) in (None, "")]
    if missing:
        raise ExtensionError(f"missing required key(s) {', '.join(missing)}", extension=where)
    return Manifest(
        name=check_name(data["name"], where=where),
        version=_version(data["version"], where),
        description=_description(data.get("description"), where),
        api_version=parse_api_version(data["api_version"], where=where),
        requirements=_requirements(data.get("requirements"), where),
        folder=folder,
    )


def check_api_version(manifest: Manifest) -> None:
    """Raise unless the manifest's API version is one this app offers: same major, minor not newer."""
    major, minor = manifest.api_version
    ours_major, ours_minor = API_VERSION
    if major == ours_major and minor <= ours_minor:
        return
    if major == ours_major:
        advice = "update the web UI to use it"
    elif major < ours_major:
        advice = "it was written for an older API; look for an updated version of the extension"
    else:
        advice = "it needs a newer web UI"
    raise ExtensionError(
        f"targets extension API {major}.{minor}, but this web UI offers {ours_major}.{ours_minor} "
        f"(compatible: {ours_major}.0 to {ours_major}.{ours_minor}); {advice}",
        extension=manifest.name, field="api_version",
    )


def _load_yaml(path: Path, where: str) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ExtensionError(f"is larger than {MAX_MANIFEST_BYTES // 1024} KiB; a manifest is a few lines",
                                 extension=where)
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ExtensionError(f"not found; every extension folder needs an {MANIFEST_FILE}", extension=where) from exc
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ExtensionError(f"cannot be read ({exc})", extension=where) from exc
    if data is None:
        raise ExtensionError(f"is empty; it needs at least {', '.join(REQUIRED_KEYS)}", extension=where)
    if not isinstance(data, dict):
        raise ExtensionError(f"expected a mapping of keys to values, got {type(data).__name__}", extension=where)
    return data


def _version(value: object, where: str) -> str:
    if isinstance(value, float):  # YAML reads 1.10 as 1.1: only a string keeps what the author wrote
        allowed = f"write it as a quoted string, e.g. \"{value}\""
    elif isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        allowed = "expected a version string, e.g. \"1.0.0\""
    else:
        return str(value).strip()
    raise ExtensionError(f"{shown(value)} is not allowed; {allowed}", extension=where, field="version")


def _description(value: object, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ExtensionError(f"{shown(value)} is not allowed; expected a line of text", extension=where,
                             field="description")
    return value.strip()


def _requirements(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
        raise ExtensionError(
            f"{shown(value)} is not allowed; expected a list of pip requirement strings, e.g. [\"numpy>=1.26\"]",
            extension=where, field="requirements",
        )
    return tuple(item.strip() for item in value)
