"""Model folders (ours, A1111's and ComfyUI's layouts), name -> path only from the list, and presets."""

from pathlib import Path

import pytest

from webui.errors import RequestError
from webui.paths import ModelLibrary, safe_join
from webui.presets import PresetError, load_preset, load_presets

ROOT = Path(__file__).resolve().parent.parent


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_our_layout_and_a1111_layout(tmp_path):
    touch(tmp_path / "checkpoints" / "a.safetensors")
    touch(tmp_path / "Stable-diffusion" / "sub" / "b.ckpt")
    touch(tmp_path / "VAE" / "v.pt")
    touch(tmp_path / "checkpoints" / "notes.txt")
    library = ModelLibrary(tmp_path)
    assert library.names("checkpoints") == ["a.safetensors", "sub/b.ckpt"]
    assert library.names("vae") == ["v.pt"]
    assert library.path("checkpoints", "sub/b.ckpt").name == "b.ckpt"
    assert library.path("checkpoints", "a").name == "a.safetensors"  # without its extension


def test_the_demo_models_tokenizer_folder_is_not_a_checkpoint(tmp_path):
    touch(tmp_path / "checkpoints" / "webui-demo.safetensors")
    touch(tmp_path / "checkpoints" / "webui-demo.tokenizer" / "vocab.json")
    touch(tmp_path / "checkpoints" / "webui-demo.tokenizer" / "merges.txt")
    library = ModelLibrary(tmp_path)
    assert library.names("checkpoints") == ["webui-demo.safetensors"]
    with pytest.raises(RequestError):
        library.path("checkpoints", "webui-demo.tokenizer")


@pytest.mark.parametrize("name", ["../x.safetensors", "/etc/passwd", "a.safetensors/../../x", "sub\\..\\..\\x", ""])
def test_only_listed_names_resolve(tmp_path, name):
    touch(tmp_path / "checkpoints" / "a.safetensors")
    touch(tmp_path / "x.safetensors")
    with pytest.raises(RequestError, match="a name from the checkpoints list"):
        ModelLibrary(tmp_path).path("checkpoints", name)


def test_links_out_of_the_folder_are_not_listed(tmp_path):
    outside = touch(tmp_path / "elsewhere" / "secret.safetensors")
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / "link.safetensors").symlink_to(outside)
    assert ModelLibrary(tmp_path / "models").names("checkpoints") == []
    assert safe_join(tmp_path, "../x") is None and safe_join(tmp_path, "a/b") == (tmp_path / "a" / "b").resolve()


def test_shipped_presets_are_valid():
    presets = load_presets(ROOT / "presets")
    assert {"sd15-512", "sd2-768-v", "sdxl-1024", "low-vram", "demo"} <= set(presets)
    assert presets["demo"]["width"] == 128


def test_unknown_preset_key_names_file_and_key(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("width: 512\nsampler: Euler\n")
    with pytest.raises(PresetError, match="Preset mine.yaml: unknown key 'sampler'"):
        load_preset(path)
    path.write_text("width: 513\n")
    with pytest.raises(PresetError, match="Preset mine.yaml: width: 513"):
        load_preset(path)


# --- properties (hypothesis) ------------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SEGMENTS = st.sampled_from(["..", ".", "", "a", "b.safetensors", "sub", "%2e%2e", "..\\..", "C:", "\\\\host",
                            "link", "x\x00y", "Lora_evil", "A.SAFETENSORS", "~", "é", "/etc/passwd"])
NAMES = st.one_of(st.lists(SEGMENTS, max_size=6).map("/".join), st.text(max_size=40))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A models folder with a file, a sub-folder, a link that escapes it and a sibling folder with a shared prefix."""
    root = tmp_path_factory.mktemp("tree")
    folder = root / "models" / "loras"
    touch(folder / "b.safetensors")
    touch(folder / "sub" / "c.safetensors")
    touch(root / "models" / "loras_evil" / "d.safetensors")
    touch(root / "secret.safetensors")
    (folder / "link").symlink_to(root, target_is_directory=True)
    return root


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=NAMES)
def test_safe_join_agrees_with_resolving_and_checking_containment(tree, name):
    root = tree / "models" / "loras"
    try:
        oracle = (root / name).resolve()
        inside = oracle.is_relative_to(root.resolve())
    except (OSError, ValueError):  # NUL bytes and the like: not a path at all
        oracle, inside = None, False
    joined = safe_join(root, name)
    assert (joined is not None) == inside
    if joined is not None:
        assert joined == oracle


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=NAMES)
def test_a_name_resolves_only_to_a_listed_file_inside_its_folder(tree, name):
    library = ModelLibrary(tree / "models")
    listed = {library.path("loras", n).resolve() for n in library.names("loras")}
    try:
        path = library.path("loras", name, "lora")
    except RequestError as exc:
        assert exc.field == "lora"
        return
    assert path.resolve() in listed and path.resolve().is_relative_to((tree / "models" / "loras").resolve())
