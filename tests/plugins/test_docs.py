"""docs/extensions.md: every hook has its section, and the guide's example extension works as it says."""

import re
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import save_file

from webui.engine.models.loading import load_checkpoint
from webui.engine.pipelines import PipelineContext, generate
from webui.engine.request import GenerationRequest
from webui.outputs import parse_infotext
from webui.plugins import ControlsSpec, TabSpec
from webui.plugins.manager import HOOK_NAMES, ExtensionManager

from ..engine.models.tiny_checkpoints import Recipe, make_checkpoint

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "extensions.md"
RESERVED = "reserved: specified, not yet called by this version"


def guide() -> str:
    return GUIDE.read_text(encoding="utf-8")


def hook_sections(text: str) -> dict[str, str]:
    """`### `name`` heading -> the text up to the next heading."""
    found = {}
    pieces = re.split(r"^(#{2,3} .*)$", text, flags=re.M)
    for heading, body in zip(pieces[1::2], pieces[2::2]):
        match = re.fullmatch(r"### `(\w+)`", heading.strip())
        if match:
            found[match[1]] = body
    return found


def example_files(text: str) -> dict[str, str]:
    """The code blocks whose first line is `# file: <name>`: {name: the block's text}."""
    files = {}
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.M | re.S):
        first, _, _ = block.partition("\n")
        match = re.fullmatch(r"# file: (\S+)", first.strip())
        if match:
            files[match[1]] = block
    return files


def called_by_the_app(hook: str) -> bool:
    """Whether any app module other than the spec names the hook as a string (how the hooks are called)."""
    for path in (ROOT / "webui").rglob("*.py"):
        if path.name != "hookspecs.py" and re.search(rf"[\"']{hook}[\"']", path.read_text(encoding="utf-8")):
            return True
    return False


# --- the hook reference --------------------------------------------------------------------------


def test_every_hook_has_its_own_section_and_no_other_hook_is_documented():
    sections = hook_sections(guide())
    assert set(sections) == set(HOOK_NAMES), (
        f"missing: {sorted(set(HOOK_NAMES) - set(sections))}, unknown: {sorted(set(sections) - set(HOOK_NAMES))}")
    for hook, body in sections.items():
        assert f"`{hook}(" in body, f"the section of {hook} should show its call"
        assert len(body.split()) >= 20, f"the section of {hook} says too little"


def test_the_summary_table_lists_every_hook():
    reference = guide().split("## Hook reference", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \|", reference, flags=re.M)
    assert sorted(rows) == sorted(HOOK_NAMES)


def test_hooks_are_documented_as_reserved_exactly_when_the_app_does_not_call_them():
    sections = hook_sections(guide())
    reserved = {hook for hook, body in sections.items() if RESERVED in body.replace("\n", " ")}
    uncalled = {hook for hook in HOOK_NAMES if not called_by_the_app(hook)}
    assert reserved == uncalled
    assert {"api_routes", "register_samplers", "register_schedules", "register_model_families"} >= uncalled


def test_every_hook_argument_is_mentioned_in_its_section():
    import inspect

    from webui.plugins import hookspecs

    sections = hook_sections(guide())
    for hook in HOOK_NAMES:
        for argument in inspect.signature(getattr(hookspecs, hook)).parameters:
            assert argument in sections[hook], f"{hook}: argument {argument} is not described"


def test_the_documented_api_version_is_the_apps():
    from webui.plugins.manifest import API_VERSION

    assert f"extension API **{API_VERSION[0]}.{API_VERSION[1]}**" in guide()


# --- the example extension -----------------------------------------------------------------------


@pytest.fixture
def vignette(tmp_path) -> ExtensionManager:
    """The guide's example, written to an extensions folder exactly as the guide shows it, and loaded."""
    files = example_files(guide())
    assert sorted(files) == ["__init__.py", "extension.yaml"]
    folder = tmp_path / "extensions" / "vignette"
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    manager = ExtensionManager(builtin_dir=None, extensions_dir=tmp_path / "extensions", data_dir=tmp_path / "data",
                               models_dir=tmp_path / "models")
    manager.load()
    return manager


def request_with(strength=None, **values) -> GenerationRequest:
    extensions = {} if strength is None else {"vignette": {"strength": strength}}
    return GenerationRequest(prompt="a cat", extensions=extensions, **values)


def test_the_example_loads(vignette):
    assert vignette.rows() == [{"name": "vignette", "version": "1.0.0", "source": "installed", "status": "loaded",
                                "error": None, "description": vignette.records[0].description}]
    assert "Vignette" in vignette.records[0].description


def test_the_example_adds_a_tab_and_a_slider_to_txt2img_and_img2img(vignette):
    import gradio as gr

    (record, tabs), = vignette.call("ui_tabs", {})
    assert record.name == "vignette" and [type(t) for t in tabs] == [TabSpec] and tabs[0].title == "Vignette"
    controls = {tab: vignette.call("ui_controls", {"tab": tab}) for tab in ("txt2img", "img2img", "inpaint", "depth")}
    assert controls["inpaint"] == [] and controls["depth"] == []
    spec = controls["txt2img"][0][1]
    assert isinstance(spec, ControlsSpec) and spec.title == "Vignette" and controls["img2img"][0][1].title == "Vignette"
    with gr.Blocks():
        with gr.Tab(tabs[0].title):
            tabs[0].build()
        with gr.Accordion(spec.title):
            components = spec.build()
    assert list(components) == ["strength"] and isinstance(components["strength"], gr.Slider)
    assert components["strength"].value == 0.0 and components["strength"].maximum == 1.0


def test_the_example_darkens_the_corners_and_writes_its_infotext_field(vignette):
    hooks = vignette.hooks_for_job()
    request = hooks.rewrite_request(request_with(0.5), None)
    white = Image.new("RGB", (64, 64), "white")
    image = hooks.postprocess_image(white, request, 0)
    assert image is not white and image.size == (64, 64) and image.mode == "RGB"
    assert all(c >= 250 for c in image.getpixel((32, 32)))  # the centre stays (almost) as it was
    assert all(120 <= c <= 135 for c in image.getpixel((0, 0)))  # the corners get half black
    assert hooks.infotext_fields(request) == {"Vignette": "0.5"}
    assert hooks.notices == []


def test_the_example_leaves_images_alone_without_a_strength(vignette):
    hooks = vignette.hooks_for_job()
    white = Image.new("RGB", (64, 64), "white")
    for request in (request_with(), request_with(0.0)):
        request = hooks.rewrite_request(request, None)
        assert hooks.postprocess_image(white, request, 0) is white
        assert hooks.infotext_fields(request) == {}
    assert hooks.notices == []


def test_the_example_clamps_a_strength_out_of_range_with_the_notice_the_guide_shows(vignette):
    hooks = vignette.hooks_for_job()
    request = hooks.rewrite_request(request_with(1.7), None)
    assert request.extensions["vignette"]["strength"] == 1.0
    assert hooks.notices == ["vignette: strength 1.7 is outside 0..1; using 1"]
    assert "`vignette: strength 1.7 is outside 0..1; using 1`" in guide()
    image = hooks.postprocess_image(Image.new("RGB", (64, 64), "white"), request, 0)
    assert all(c <= 5 for c in image.getpixel((0, 0)))  # strength 1: black corners

    hooks = vignette.hooks_for_job()
    assert hooks.rewrite_request(request_with("lots"), None).extensions["vignette"]["strength"] == 0.0
    assert hooks.notices == ["vignette: strength 'lots' is not a number; no vignette"]


def test_the_example_reads_its_field_back(vignette):
    assert [value for _, value in vignette.call("read_infotext", {"params": {"Steps": "20", "Vignette": "0.5"}})] == [
        {"strength": 0.5}]
    assert vignette.call("read_infotext", {"params": {"Steps": "20"}}) == []
    assert vignette.call("read_infotext", {"params": {"Vignette": "dark"}}) == []
    assert vignette.records[0].failures == 0


def test_the_example_through_a_real_generation(vignette, tmp_path):
    checkpoint = tmp_path / "tiny.safetensors"
    save_file(make_checkpoint(Recipe("sd1"), seed=42), str(checkpoint))
    bundle = load_checkpoint(checkpoint)
    small = dict(width=64, height=64, steps=2, seed=5)

    plain = generate(request_with(**small), PipelineContext(bundle, hooks=vignette.hooks_for_job()))
    shaded = generate(request_with(0.5, **small), PipelineContext(bundle, hooks=vignette.hooks_for_job()))

    assert "Vignette" not in plain.infotexts[0] and plain.notices == [] and shaded.notices == []
    assert ", Vignette: 0.5, Version: " in shaded.infotexts[0]
    before, after = plain.images[0], shaded.images[0]
    assert all(abs(a - b) <= 3 for a, b in zip(after.getpixel((32, 32)), before.getpixel((32, 32))))
    corner_before, corner_after = sum(before.getpixel((1, 1))), sum(after.getpixel((1, 1)))
    assert corner_after <= corner_before * 0.6 + 3
    params = parse_infotext(shaded.infotexts[0]).a1111_params()
    assert [value for _, value in vignette.call("read_infotext", {"params": params})] == [{"strength": 0.5}]
