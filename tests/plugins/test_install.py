"""Installing extensions from git: local test repositories only (no network), refused URLs, safe removal."""

import shutil
import subprocess
from pathlib import Path

import pytest

from webui.plugins import install
from webui.plugins.install import (
    UpdateInfo, check_for_update, folder_name_for, install_extension, uninstall_extension, update_extension,
    validate_git_url,
)
from webui.plugins.manifest import ExtensionError

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(cwd: Path, *args: str) -> str:
    config = ["-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "init.defaultBranch=main",
              "-c", "commit.gpgsign=false"]
    return subprocess.run(["git", *config, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str = "change") -> str:
    for name, text in files.items():
        (repo / name).write_text(text, encoding="utf-8")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def manifest_text(name: str = "demo", version: str = "1.0", api: str = "1.0", extra: str = "") -> str:
    return f'name: {name}\nversion: "{version}"\ndescription: A test extension\napi_version: "{api}"\n{extra}'


def make_repo(path: Path, manifest: str | None = None, init: bool = True) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q")
    files = {"extension.yaml": manifest if manifest is not None else manifest_text()}
    if init:
        files["__init__.py"] = "VALUE = 1\n"
    commit(path, files, "first")
    return path


@pytest.fixture
def repo(tmp_path) -> Path:
    return make_repo(tmp_path / "src" / "Demo.Repo")


@pytest.fixture
def extensions_dir(tmp_path) -> Path:
    folder = tmp_path / "extensions"
    folder.mkdir()
    return folder


def test_install_from_local_path(repo, extensions_dir):
    manifest = install_extension(str(repo), extensions_dir)
    assert manifest.name == "demo" and manifest.folder == extensions_dir.resolve() / "demo"
    assert (extensions_dir / "demo" / "__init__.py").read_text() == "VALUE = 1\n"
    assert sorted(p.name for p in extensions_dir.iterdir()) == ["demo"]  # no staging folder left


def test_install_from_file_url_names_the_folder_after_the_manifest(repo, extensions_dir):
    manifest = install_extension(repo.as_uri(), extensions_dir)
    assert manifest.folder.name == "demo" and repo.name == "Demo.Repo"
    assert manifest.folder.joinpath("extension.yaml").is_file()


def test_installing_twice_is_refused_and_the_first_stays(repo, extensions_dir):
    install_extension(str(repo), extensions_dir)
    with pytest.raises(ExtensionError, match="already installed"):
        install_extension(repo.as_uri(), extensions_dir)
    assert sorted(p.name for p in extensions_dir.iterdir()) == ["demo"]
    assert (extensions_dir / "demo" / "__init__.py").is_file()


@pytest.mark.parametrize("manifest, init, expected", [
    (manifest_text(extra="script: evil.sh\n"), True, "unknown key"),
    ("", True, "is empty"),
    (manifest_text(name="Bad Name"), True, "name"),
    (manifest_text(name="builtin"), True, "reserved"),
    (manifest_text(), False, "__init__.py"),
])
def test_bad_checkout_leaves_nothing_behind(tmp_path, extensions_dir, manifest, init, expected):
    source = make_repo(tmp_path / "bad", manifest, init)
    with pytest.raises(ExtensionError, match=expected):
        install_extension(str(source), extensions_dir)
    assert list(extensions_dir.iterdir()) == []


def test_api_version_mismatch_is_refused(tmp_path, extensions_dir):
    source = make_repo(tmp_path / "future", manifest_text(api="2.0"))
    with pytest.raises(ExtensionError, match=r"targets extension API 2\.0, but this web UI offers 1\.1"):
        install_extension(str(source), extensions_dir)
    assert list(extensions_dir.iterdir()) == []


def test_update_is_detected_and_applied(repo, extensions_dir):
    folder = install_extension(str(repo), extensions_dir).folder
    first = check_for_update(folder)
    assert first == UpdateInfo(git(repo, "rev-parse", "HEAD"), git(repo, "rev-parse", "HEAD"), False)
    new_head = commit(repo, {"extension.yaml": manifest_text(version="1.1"), "__init__.py": "VALUE = 2\n"})
    info = check_for_update(folder)
    assert info.behind and info.remote_commit == new_head and info.current_commit == first.current_commit
    assert info.error is None
    manifest = update_extension(folder)
    assert manifest.version == "1.1" and (folder / "__init__.py").read_text() == "VALUE = 2\n"
    assert check_for_update(folder) == UpdateInfo(new_head, new_head, False)


@pytest.mark.parametrize("bad_manifest, expected", [
    (manifest_text(api="9.0"), "targets extension API 9.0"),
    (manifest_text(name="renamed"), "renamed"),
    ("name: [broken\n", "cannot be read"),
])
def test_update_with_a_bad_manifest_keeps_the_old_commit(repo, extensions_dir, bad_manifest, expected):
    folder = install_extension(str(repo), extensions_dir).folder
    old = git(folder, "rev-parse", "HEAD")
    commit(repo, {"extension.yaml": bad_manifest, "__init__.py": "VALUE = 3\n"})
    with pytest.raises(ExtensionError, match=expected) as info:
        update_extension(folder)
    assert "kept" in str(info.value)
    assert git(folder, "rev-parse", "HEAD") == old and (folder / "__init__.py").read_text() == "VALUE = 1\n"


def test_update_is_fast_forward_only(repo, extensions_dir):
    folder = install_extension(str(repo), extensions_dir).folder
    commit(folder, {"local.txt": "mine"})
    local_head = git(folder, "rev-parse", "HEAD")
    commit(repo, {"__init__.py": "VALUE = 2\n"})
    with pytest.raises(ExtensionError, match="fast-forward"):
        update_extension(folder)
    assert git(folder, "rev-parse", "HEAD") == local_head


def test_update_refuses_local_edits_and_keeps_them(repo, extensions_dir):
    folder = install_extension(str(repo), extensions_dir).folder
    (folder / "__init__.py").write_text("VALUE = 'mine'\n")
    commit(repo, {"extension.yaml": manifest_text(api="9.0")})
    with pytest.raises(ExtensionError, match="local changes"):
        update_extension(folder)
    assert (folder / "__init__.py").read_text() == "VALUE = 'mine'\n"


def test_update_never_touches_an_enclosing_repository(tmp_path):
    # A built-in extension is a plain folder inside the web UI's own checkout: git must not act on that.
    app = make_repo(tmp_path / "app", manifest_text(name="app"))
    plain = app / "extensions" / "plain"
    plain.mkdir(parents=True)
    (plain / "extension.yaml").write_text(manifest_text(name="plain"))
    head = git(app, "rev-parse", "HEAD")
    with pytest.raises(ExtensionError, match="not an extension installed from git"):
        update_extension(plain)
    info = check_for_update(plain)
    assert info.error and not info.behind and info.remote_commit is None
    builtin = app / "extensions" / "builtin" / "lora"
    builtin.mkdir(parents=True)
    with pytest.raises(ExtensionError, match="built-in"):
        update_extension(builtin)
    assert git(app, "rev-parse", "HEAD") == head


def test_uninstall_removes_only_that_extension(tmp_path, repo, extensions_dir):
    install_extension(str(repo), extensions_dir)
    install_extension(str(make_repo(tmp_path / "other", manifest_text(name="other"))), extensions_dir)
    uninstall_extension("demo", extensions_dir)
    assert sorted(p.name for p in extensions_dir.iterdir()) == ["other"]
    with pytest.raises(ExtensionError, match="not installed"):
        uninstall_extension("demo", extensions_dir)


@pytest.mark.parametrize("name", ["../outside", "..", ".", "", "/etc", "a/b", "builtin/lora", "Outside", "outside/"])
def test_uninstall_refuses_names_that_are_not_extension_names(tmp_path, extensions_dir, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "extension.yaml").write_text(manifest_text(name="outside"))
    with pytest.raises(ExtensionError, match="name"):
        uninstall_extension(name, extensions_dir)
    assert (outside / "extension.yaml").is_file()


def test_uninstall_refuses_builtin_symlinks_and_folders_without_manifest(tmp_path, extensions_dir):
    (extensions_dir / "builtin" / "lora").mkdir(parents=True)
    (extensions_dir / "builtin" / "extension.yaml").write_text(manifest_text(name="builtin"))
    with pytest.raises(ExtensionError, match="built-in"):
        uninstall_extension("builtin", extensions_dir)
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "extension.yaml").write_text(manifest_text(name="precious"))
    (extensions_dir / "linked").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ExtensionError, match="symbolic link"):
        uninstall_extension("linked", extensions_dir)
    (extensions_dir / "notes").mkdir()
    with pytest.raises(ExtensionError, match="has no extension.yaml"):
        uninstall_extension("notes", extensions_dir)
    assert (outside / "extension.yaml").is_file() and (extensions_dir / "builtin" / "lora").is_dir()
    assert (extensions_dir / "linked").is_symlink() and (extensions_dir / "notes").is_dir()


@pytest.mark.parametrize("url", [
    "ext::sh -c touch% /tmp/pwned", "ext::git-upload-pack", "fd::17", "-uhello", "--upload-pack=x", "http://x/y",
    "ssh://-oProxyCommand=touch%20/tmp/pwned/x", "ssh://git@github.com/a/b", "git://github.com/a/b",
    "git@github.com:a/b",
    "https://user:pw@github.com/a/b", "https://token@github.com/a/b", "https://github.com/a/b?x=1",
    "https://github.com/a/b#main", " ", "", "file:///nonexistent", "https://github.com/a/b\n--upload-pack=x",
    "https://github.com/a\r\n/b", "https://github.com/a\tb", "https://github.com/a/b\x00",
    "https://github.com/a\u200b/b",
    "https://", "https://github.com", "https:///a/b",
    "https://github.com/a/../b", "https://localhost/a/b", "https://127.0.0.1/a/b", "https://169.254.169.254/a/b",
    "https://2130706433/a/b", "https://[::1]/a/b", "relative/path", "file://host/tmp/x", "FTP://x/y",
])
def test_refused_urls_name_the_field_and_spawn_nothing(monkeypatch, extensions_dir, url):
    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"subprocess started for {url!r}: {args}")

    monkeypatch.setattr(install.subprocess, "run", no_subprocess)
    with pytest.raises(ExtensionError) as info:
        validate_git_url(url)
    assert info.value.field == "url" and str(info.value).startswith("url: ")
    with pytest.raises(ExtensionError):
        install_extension(url, extensions_dir)
    assert list(extensions_dir.iterdir()) == []


def test_local_folder_that_is_not_a_repository_is_refused(tmp_path):
    with pytest.raises(ExtensionError, match="not a git repository"):
        validate_git_url(str(tmp_path))


@pytest.mark.parametrize("url, cleaned", [
    ("https://github.com/a/b.git", "https://github.com/a/b.git"),
    ("  https://github.com/owner/sd-ext/\n", "https://github.com/owner/sd-ext"),  # pasted with a newline
    ("HTTPS://GitLab.com:8443/group/sub/repo", "https://gitlab.com:8443/group/sub/repo"),
])
def test_https_urls_are_accepted_without_network(url, cleaned):
    assert validate_git_url(url) == cleaned


def test_local_paths_become_file_urls(repo):
    assert validate_git_url(str(repo)) == validate_git_url(repo.as_uri()) == repo.resolve().as_uri()


@pytest.mark.parametrize("url, name", [
    ("https://github.com/a/b.git", "b"), ("https://github.com/a/sd-webui-Foo.Bar.git/", "sd-webui-foo-bar"),
    ("/home/me/My Ext", "my-ext"), ("file:///srv/git/ext_one.git", "ext_one"), ("git@github.com:a/.hidden", "hidden"),
])
def test_folder_names_from_urls(url, name):
    assert folder_name_for(url) == name


@pytest.mark.parametrize("url", [
    "", "https://github.com/a/..", "https://github.com/a/.", "https://github.com/a/.git",
    "https://github.com/a/builtin", "https://github.com/a/BuiltIn.git", "https://x/" + "a" * 65,
])
def test_unusable_folder_names_are_refused(url):
    with pytest.raises(ExtensionError, match="folder name"):
        folder_name_for(url)


def test_missing_git_gives_a_clear_error(monkeypatch, repo, extensions_dir):
    monkeypatch.setattr(install.shutil, "which", lambda name: None)
    with pytest.raises(ExtensionError, match="git is not installed"):
        install_extension(str(repo), extensions_dir)
    assert list(extensions_dir.iterdir()) == []


def test_git_is_called_safely(monkeypatch, repo, extensions_dir):
    calls = []
    real_run = subprocess.run

    def spy(command, **kwargs):
        calls.append((command, kwargs))
        return real_run(command, **kwargs)

    monkeypatch.setattr(install.subprocess, "run", spy)
    install_extension(str(repo), extensions_dir)
    (command, kwargs), = calls
    assert isinstance(command, list) and kwargs.get("shell") is None and kwargs["timeout"] > 0
    assert command[-3:] == ["--", repo.resolve().as_uri(), command[-1]] and ".installing-" in command[-1]
    assert "--no-recurse-submodules" in command and "protocol.ext.allow=never" in command
    env = kwargs["env"]
    assert env["GIT_TERMINAL_PROMPT"] == "0" and env["GIT_ALLOW_PROTOCOL"] == "https:file"


@pytest.mark.parametrize("source, reason", [
    ("ext::sh -c touch% {canary}", "transport 'ext' not allowed"), ("fd::0", "transport 'fd' not allowed"),
    ("http://127.0.0.1:9/x", "transport 'http' not allowed"),
    ("ssh://-oProxyCommand=touch%20{canary}/x", "transport 'ssh' not allowed"),
    ("--upload-pack=touch {canary}", "does not exist"),  # after `--` it is only a (missing) path
])
def test_git_itself_refuses_dangerous_sources_even_past_validation(tmp_path, source, reason):
    canary = tmp_path / "pwned"
    with pytest.raises(ExtensionError, match="git clone failed") as info:
        install._run_git(["clone", "--", source.format(canary=canary), str(tmp_path / "out")], cwd=tmp_path)
    assert reason in str(info.value)
    assert not canary.exists() and not (tmp_path / "out").exists()
