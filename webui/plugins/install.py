"""Installing, updating and removing community extensions from git, defensively.

An installed extension runs its code, so each step is careful. A source must be an https:// URL or a
local git repository. git is called as a list of arguments, with `--` before the URL and the protocols
limited to https and file, so `ext::` helpers, option injection and credential prompts are ruled out.
A clone lands in a hidden staging folder and moves into place only after its manifest and API version
check out. Updates are fast-forward only and go back to the previous commit if the new manifest is
bad. Requirements are pip-installed only after confirmation, with the installed torch pinned.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import ipaddress
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import unquote, urlsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from webui.plugins.manifest import (MANIFEST_FILE, NAME_RULE, ExtensionError, Manifest, check_api_version, check_name,
                                    is_valid_name, read_manifest, shown)

RESERVED_NAMES = frozenset({"builtin"})  # extensions/builtin/ holds the built-in extensions
STAGING_PREFIX = ".installing-"  # hidden, so discovery never loads a half-installed extension
NETWORK_TIMEOUT_S = 300  # clone and fetch
LOCAL_TIMEOUT_S = 60
PIP_TIMEOUT_S = 1800
# Packages tied to the torch build launch.py installed; extensions may only restate the installed pins.
TORCH_PACKAGES = frozenset({"torch", "torchvision", "torchaudio", "torchtext", "torchdata", "torchao", "pytorch"})
URL_RULE = ("an https://host/owner/repo URL (no user name, password, query or fragment), "
            "or the absolute path or file:// URL of a local git repository")
# Only https and local repositories; ext:: (runs commands) is off twice over. No stored credentials
# are offered to the host, and a stalled download gives up instead of hanging.
GIT_OPTIONS = (
    "-c", "protocol.allow=never", "-c", "protocol.https.allow=always", "-c", "protocol.file.allow=always",
    "-c", "protocol.ext.allow=never", "-c", "credential.helper=", "-c", "submodule.recurse=false",
    "-c", "http.lowSpeedLimit=1000", "-c", "http.lowSpeedTime=60",
)
# Variables that would point git at another repository than the folder we run it in.
GIT_LOCATION_VARIABLES = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR",
                          "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE")
_TRANSPORT_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*::")
_HOST = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*")
_URL_PATH = re.compile(r"(/[A-Za-z0-9._~%+-]+)+/?")


@dataclass(frozen=True)
class UpdateInfo:
    """The result of `check_for_update`: commits, whether upstream has new ones, or what went wrong."""

    current_commit: str
    remote_commit: str | None
    behind: bool
    error: str | None = None


def validate_git_url(url: str) -> str:
    """The cleaned source URL (https://..., or file://... for a local repository); else ExtensionError."""

    def refuse(why: str) -> NoReturn:
        raise ExtensionError(f"{shown(url)} is not allowed ({why}); expected {URL_RULE}", field="url")

    cleaned = url.strip() if isinstance(url, str) else ""
    if not cleaned:
        refuse("it is empty")
    if any(ch.isspace() or not ch.isprintable() for ch in cleaned):
        refuse("it contains whitespace or control characters")
    if cleaned.startswith("-"):
        refuse("it starts with '-', which git would read as an option")
    if _TRANSPORT_PREFIX.match(cleaned):
        refuse("'<transport>::' addresses make git run a helper program")
    if cleaned.lower().startswith("https://"):
        return _clean_https(cleaned, refuse)
    if cleaned.lower().startswith("file://") or Path(cleaned).is_absolute():
        return _clean_local(cleaned, refuse)
    scheme = cleaned.split("://", 1)[0] if "://" in cleaned else None
    refuse(f"the {scheme}:// scheme is not allowed" if scheme else "not an https:// URL or an absolute path")


def folder_name_for(url: str) -> str:
    """A safe folder name from the URL's last path component, e.g. .../sd-webui-Foo.git -> sd-webui-foo."""
    text = url.strip() if isinstance(url, str) else ""
    text = re.split(r"[?#]", text, maxsplit=1)[0]
    tail = unquote(text).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    if tail.lower().endswith(".git"):
        tail = tail[:-4]
    name = re.sub(r"[^a-z0-9_-]", "-", tail.lower()).lstrip("-_")
    if tail in ("", ".", "..") or not name or name in RESERVED_NAMES or not is_valid_name(name):
        raise ExtensionError(f"{shown(url)} gives no usable folder name ({shown(name)}); expected {NAME_RULE}, "
                             f"not {', '.join(sorted(RESERVED_NAMES))}", field="url")
    return name


def install_extension(url: str, extensions_dir: Path) -> Manifest:
    """Clone `url` into extensions_dir/<manifest name> after checking its manifest; nothing is left on failure."""
    source = validate_git_url(url)
    extensions_dir = Path(extensions_dir).resolve()
    extensions_dir.mkdir(parents=True, exist_ok=True)
    staging = extensions_dir / f"{STAGING_PREFIX}{secrets.token_hex(8)}"
    try:
        _run_git(["clone", "--no-recurse-submodules", "--quiet", "--", source, str(staging)], cwd=extensions_dir,
                 timeout=NETWORK_TIMEOUT_S)
        try:
            manifest = _check_checkout(staging)
        except ExtensionError as exc:
            raise ExtensionError(f"cannot install {source}: {exc}") from exc
        target = extensions_dir / manifest.name
        if target.exists() or target.is_symlink():
            raise ExtensionError(f"is already installed in {target}; update or uninstall it", extension=manifest.name)
        staging.rename(target)
    except BaseException:
        with contextlib.suppress(OSError):
            _remove_tree(staging)
        raise
    return replace(manifest, folder=target)


def check_for_update(folder: Path) -> UpdateInfo:
    """Fetch the extension's upstream and compare; problems come back in `error` rather than raised."""
    folder = Path(folder)
    current = ""
    try:
        _check_repository(folder)
        current = _run_git(["rev-parse", "HEAD"], cwd=folder)
        _fetch(folder)
        remote = _run_git(["rev-parse", "@{upstream}"], cwd=folder)
        behind = int(_run_git(["rev-list", "--count", "HEAD..@{upstream}"], cwd=folder)) > 0
        return UpdateInfo(current, remote, behind)
    except ExtensionError as exc:
        return UpdateInfo(current, None, False, str(exc))


def update_extension(folder: Path) -> Manifest:
    """Fast-forward the extension to its upstream; a bad new manifest puts the old commit back."""
    folder = Path(folder)
    name = check_name(folder.name, field="folder")
    if name in RESERVED_NAMES or folder.parent.name in RESERVED_NAMES:
        raise ExtensionError("built-in extensions update with the web UI itself", extension=name)
    _check_repository(folder)
    if _run_git(["status", "--porcelain", "--untracked-files=no"], cwd=folder):
        # A bad update is undone with a hard reset, which must not take the user's own edits with it.
        raise ExtensionError(f"{folder} has local changes; commit or discard them before updating", extension=name)
    old = _run_git(["rev-parse", "HEAD"], cwd=folder)
    _fetch(folder)
    try:
        _run_git(["merge", "--ff-only", "--quiet", "@{upstream}"], cwd=folder)
    except ExtensionError as exc:
        raise ExtensionError(f"cannot fast-forward (local changes or rewritten upstream history?): {exc}",
                             extension=name) from exc
    try:
        return _check_checkout(folder, expected_name=name)
    except ExtensionError as exc:
        _run_git(["reset", "--hard", "--quiet", old], cwd=folder)
        raise ExtensionError(f"update refused and commit {old[:12]} kept: {exc}", extension=name) from exc


def uninstall_extension(name: str, extensions_dir: Path) -> None:
    """Delete extensions_dir/<name>: only a real (not linked) direct child holding a manifest, never builtin."""
    check_name(name, field="name")  # rules out '', '.', '..', separators and absolute paths
    if name in RESERVED_NAMES:
        raise ExtensionError("built-in extensions cannot be uninstalled; disable them instead", extension=name)
    root = Path(extensions_dir).resolve()
    target = root / name
    if target.is_symlink():
        raise ExtensionError(f"{target} is a symbolic link; remove the link yourself", extension=name)
    if not target.is_dir():
        raise ExtensionError(f"is not installed (no folder {target})", extension=name)
    if target.resolve().parent != root or not (target / MANIFEST_FILE).is_file():
        raise ExtensionError(f"{target} has no {MANIFEST_FILE}; only extension folders are removed", extension=name)
    _remove_tree(target)


def requirements_plan(manifest: Manifest) -> list[str]:
    """The requirements pip would install; refuses pip options, URLs, paths and any change to torch."""
    installed = _installed_torch_packages()
    plan: list[str] = []
    for text in manifest.requirements:
        req = _parse_requirement(text, manifest.name)
        key = canonicalize_name(req.name).replace("-", "")  # torch-vision is as much torchvision to us
        if key in TORCH_PACKAGES and not _is_exact_pin(req, installed.get(key)):
            pin = f"only the exact pin \"{key}=={installed[key]}\" is accepted" if key in installed else "not installed"
            raise ExtensionError(f"{shown(text)} is not allowed: extensions may not install or change {key} ({pin})",
                                 extension=manifest.name, field="requirements")
        if str(req) not in plan:
            plan.append(str(req))
    return plan


def install_requirements(manifest: Manifest, *, confirmed: bool, python: str = sys.executable,
                         runner: Callable[..., Any] = subprocess.run) -> list[str]:
    """pip-install the manifest's requirements once the user confirmed, with the installed torch pinned."""
    plan = requirements_plan(manifest)
    if not confirmed:
        raise ExtensionError(f"installing requirements runs pip and needs your confirmation; it would install: "
                             f"{', '.join(plan) or 'nothing'}", extension=manifest.name, field="requirements")
    if not plan:
        return []
    pins = _installed_torch_packages()
    if "torch" not in pins:
        raise ExtensionError("torch is not installed; run launch.py first so that pip cannot choose a torch build",
                             extension=manifest.name, field="requirements")
    with tempfile.TemporaryDirectory(prefix="webui-constraints-") as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
        command = [python, "-m", "pip", "install", "--no-input", "--constraint", str(constraints), "--", *plan]
        try:
            done = runner(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ExtensionError(f"pip could not run: {exc}", extension=manifest.name, field="requirements") from exc
    if done.returncode != 0:
        raise ExtensionError(f"pip install failed (exit {done.returncode}): {_tail(done.stderr or done.stdout)}",
                             extension=manifest.name, field="requirements")
    return plan


# --- helpers -----------------------------------------------------------------------------------------

def _clean_https(url: str, refuse: Callable[[str], NoReturn]) -> str:
    if "?" in url or "#" in url:
        refuse("query strings and fragments are not allowed")
    parts = urlsplit(url)
    if "@" in parts.netloc:
        refuse("user names and passwords do not belong in the URL")
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        refuse("the port is not a number")
    if not _HOST.fullmatch(host):
        refuse("the host name is missing or not a plain DNS name")
    if _is_local_host(host):
        refuse("local, link-local and numeric-only hosts are not allowed; clone it yourself and use its path")
    path = parts.path.rstrip("/")
    if not _URL_PATH.fullmatch(path) or any(seg in (".", "..") for seg in path.split("/")):
        refuse("expected a repository path like /owner/repo after the host")
    return f"https://{host}{f':{port}' if port else ''}{path}"


def _clean_local(source: str, refuse: Callable[[str], NoReturn]) -> str:
    raw = source
    if source.lower().startswith("file://"):
        parts = urlsplit(source)
        if parts.netloc not in ("", "localhost") or "?" in source or "#" in source:
            refuse("a file:// URL needs an absolute path and no host, query or fragment")
        raw = unquote(parts.path)
    if any(ch.isspace() or not ch.isprintable() for ch in raw) or not Path(raw).is_absolute():
        refuse("a local repository needs an absolute path without whitespace or control characters")
    try:
        folder = Path(raw).resolve(strict=True)
    except (OSError, ValueError):
        refuse("no such folder")
    is_bare = (folder / "HEAD").is_file() and (folder / "objects").is_dir()
    if not folder.is_dir() or not ((folder / ".git").exists() or is_bare):
        refuse("not a git repository")
    # As a file:// URL git copies through its transport rather than hard-linking local objects.
    return folder.as_uri()


def _is_local_host(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    last = host.rsplit(".", 1)[-1]
    if not (last.isdigit() or last.startswith("0x")):
        return False  # a DNS name: real top-level domains are never numeric
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return True  # numeric forms like 2130706433 or 0x7f.1 that resolvers still map to an address
    return ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast or ip.is_reserved


def _check_checkout(folder: Path, expected_name: str | None = None) -> Manifest:
    """The manifest of a fresh checkout, if it is a loadable extension for this web UI."""
    if (folder / MANIFEST_FILE).is_symlink():
        raise ExtensionError(f"{MANIFEST_FILE} must be a file, not a symbolic link")
    manifest = read_manifest(folder)
    if manifest.name in RESERVED_NAMES:
        raise ExtensionError(f"the name {manifest.name!r} is reserved", extension=manifest.name, field="name")
    if expected_name is not None and manifest.name != expected_name:
        raise ExtensionError(f"the manifest renamed the extension to {manifest.name!r}; uninstall it and install again",
                             extension=expected_name, field="name")
    check_api_version(manifest)
    init = folder / "__init__.py"
    if init.is_symlink() or not init.is_file():
        raise ExtensionError("has no __init__.py (an extension is a Python package)", extension=manifest.name)
    return manifest


def _check_repository(folder: Path) -> None:
    """Refuse folders that are not their own git checkout, so git never acts on an enclosing repository."""
    if folder.is_symlink() or not (folder / ".git").is_dir():
        raise ExtensionError(f"{folder} is not an extension installed from git (no .git folder of its own)",
                             extension=folder.name)


def _fetch(folder: Path) -> None:
    origin = _run_git(["config", "--get", "remote.origin.url"], cwd=folder)
    validate_git_url(origin)  # the recorded source must still pass today's rules
    _run_git(["fetch", "--quiet", "--no-recurse-submodules", "origin"], cwd=folder, timeout=NETWORK_TIMEOUT_S)


def _run_git(args: list[str], *, cwd: Path, timeout: float = LOCAL_TIMEOUT_S) -> str:
    git = shutil.which("git")
    if git is None:
        raise ExtensionError("git is not installed or not on PATH; install git to install or update extensions")
    env = {key: value for key, value in os.environ.items() if key not in GIT_LOCATION_VARIABLES}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="", SSH_ASKPASS="", GIT_ALLOW_PROTOCOL="https:file",
               GIT_PROTOCOL_FROM_USER="0", GIT_CEILING_DIRECTORIES=str(Path(cwd).resolve().parent))
    try:
        done = subprocess.run([git, *GIT_OPTIONS, *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, encoding="utf-8", errors="replace", timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ExtensionError(f"git {args[0]} took longer than {timeout:g} s and was stopped") from exc
    except OSError as exc:
        raise ExtensionError(f"git could not run: {exc}") from exc
    if done.returncode != 0:
        raise ExtensionError(f"git {args[0]} failed: {_tail(done.stderr or done.stdout)}")
    return done.stdout.strip()


def _parse_requirement(text: str, extension: str) -> Requirement:
    def refuse(why: str) -> NoReturn:
        raise ExtensionError(f"{shown(text)} is not allowed ({why}); expected a package name with optional version "
                             f"specifiers, e.g. \"numpy>=1.26\"", extension=extension, field="requirements")

    if text.lstrip().startswith("-"):
        refuse("pip options such as --index-url or -e are not allowed")
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        refuse(f"not a PEP 508 requirement: {exc}")
    if req.url:
        refuse("URL and path requirements are not allowed")
    return req


def _is_exact_pin(req: Requirement, installed: str | None) -> bool:
    specs = list(req.specifier)
    return (installed is not None and len(specs) == 1 and specs[0].operator in ("==", "===")
            and not specs[0].version.endswith(".*") and req.specifier.contains(installed, prereleases=True))


def _installed_torch_packages() -> dict[str, str]:
    versions = {}
    for name in sorted(TORCH_PACKAGES):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def _tail(text: str, limit: int = 500) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def _remove_tree(path: Path) -> None:
    def make_writable_and_retry(func: Callable[[str], Any], failed: str, _exc: object) -> None:
        os.chmod(failed, stat.S_IWRITE)  # git's object files are read-only, which Windows refuses to delete
        func(failed)

    if not path.exists():
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=make_writable_and_retry)
    else:
        shutil.rmtree(path, onerror=make_writable_and_retry)
