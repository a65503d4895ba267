"""Extension manifests: parsing, validation messages that name the file and field, API versions."""

from pathlib import Path

import pytest

from webui.errors import WebUIError
from webui.plugins.manifest import API_VERSION, ExtensionError, Manifest, check_api_version, read_manifest


def write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "extension.yaml").write_text(text, encoding="utf-8")
    return folder


GOOD = """name: my_ext-2
version: "1.2.0"
description: " Does things "
api_version: "1.0"
requirements: ["numpy>=1.26"]
"""


def test_reads_a_complete_manifest(tmp_path):
    manifest = read_manifest(write(tmp_path / "my_ext-2", GOOD))
    assert manifest == Manifest("my_ext-2", "1.2.0", "Does things", (1, 0), ("numpy>=1.26",), tmp_path / "my_ext-2")


def test_description_and_requirements_are_optional(tmp_path):
    manifest = read_manifest(write(tmp_path, "name: a\nversion: 3\napi_version: 1\n"))
    assert (manifest.version, manifest.description, manifest.requirements) == ("3", "", ())


@pytest.mark.parametrize("value, expected", [
    ("1", (1, 0)), ('"1"', (1, 0)), ("1.0", (1, 0)), ('"1.0"', (1, 0)), ('"1.2"', (1, 2)), ("2", (2, 0)),
])
def test_api_version_forms(tmp_path, value, expected):
    assert read_manifest(write(tmp_path, f"name: a\nversion: '1'\napi_version: {value}\n")).api_version == expected


@pytest.mark.parametrize("value", ['"one"', "true", "[1, 0]", '"1.0.0"', "-1", '"v1"', "{major: 1}"])
def test_bad_api_version_names_the_field(tmp_path, value):
    with pytest.raises(ExtensionError, match="api_version") as info:
        read_manifest(write(tmp_path, f"name: a\nversion: '1'\napi_version: {value}\n"))
    assert info.value.field == "api_version" and "MAJOR.MINOR" in str(info.value)


@pytest.mark.parametrize("name", ["My_Ext", "a b", "../x", "a/b", "-x", "_x", "x" * 65, "123.4", "ünicode", "[a]"])
def test_bad_names_are_refused_with_the_rule(tmp_path, name):
    with pytest.raises(ExtensionError, match="name") as info:
        read_manifest(write(tmp_path, f"name: {name!r}\nversion: '1'\napi_version: '1.0'\n"))
    assert "lower-case" in str(info.value) and "extension.yaml" in str(info.value)


def test_longest_name_is_accepted(tmp_path):
    assert read_manifest(write(tmp_path, f"name: {'a' * 64}\nversion: '1'\napi_version: 1\n")).name == "a" * 64


@pytest.mark.parametrize("text, expected", [
    (None, "not found"),
    ("", "is empty"),
    ("# only a comment\n", "is empty"),
    ("- a\n- b\n", "expected a mapping"),
    ("just text", "expected a mapping"),
    ("name: [unclosed\n", "cannot be read"),
    ("name: a\nversion: '1'\n", "missing required key(s) api_version"),
    ("name: a\nversion: ''\napi_version: 1\n", "missing required key(s) version"),
    ("name: a\nversion: '1'\napi_version: 1\nscript: run.sh\nhooks: x\n", "unknown key(s) hooks, script"),
    ("name: a\nversion: 1.10\napi_version: 1\n", "quoted string"),
    ("name: a\nversion: [1]\napi_version: 1\n", "version"),
    ("name: a\nversion: '1'\ndescription: [x]\napi_version: 1\n", "description"),
    ("name: a\nversion: '1'\napi_version: 1\nrequirements: numpy\n", "list of pip requirement"),
    ("name: a\nversion: '1'\napi_version: 1\nrequirements: [numpy, 3]\n", "list of pip requirement"),
])
def test_bad_manifests_name_the_file_and_the_problem(tmp_path, text, expected):
    folder = tmp_path / "ext"
    folder.mkdir()
    if text is not None:
        write(folder, text)
    with pytest.raises(ExtensionError) as info:
        read_manifest(folder)
    assert expected in str(info.value)
    assert str(folder / "extension.yaml") in str(info.value)


def test_oversized_manifest_is_refused(tmp_path):
    with pytest.raises(ExtensionError, match="larger than"):
        read_manifest(write(tmp_path, "name: a\nversion: '1'\napi_version: 1\n" + "#" * 70_000))


def test_api_version_compatibility():
    major, minor = API_VERSION
    for compatible in [(major, 0), (major, minor)]:
        check_api_version(Manifest("a", "1", "", compatible))
    cases = [((major + 1, 0), "newer web UI"), ((major, minor + 1), "update the web UI"), ((major - 1, 9), "older API")]
    for incompatible, hint in cases:
        with pytest.raises(ExtensionError) as info:
            check_api_version(Manifest("a", "1", "", incompatible))
        message = str(info.value)
        assert f"targets extension API {incompatible[0]}.{incompatible[1]}" in message
        assert f"offers {major}.{minor}" in message and hint in message and message.startswith("a: api_version:")


def test_extension_error_is_a_webui_error():
    assert issubclass(ExtensionError, WebUIError)
