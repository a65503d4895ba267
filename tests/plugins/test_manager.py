"""The extension manager on extensions written into temporary folders: loading, refusing, isolating
failures, the three-failures rule, enable/disable, and the per-job hooks the engine calls."""

import json
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import save_file

from webui.engine.models.loading import load_checkpoint
from webui.engine.pipelines import PipelineContext, generate
from webui.engine.prompts import ParsedPrompt, PromptPart, ScheduledText, WeightedText
from webui.engine.sampling.denoisers import SamplingState
from webui.engine.request import GenerationRequest
from webui.plugins.discovery import MODULE_PREFIX
from webui.plugins.manager import MAX_FAILURES, ExtensionManager, ExtensionState
from webui.plugins.manifest import ExtensionError

from ..engine.models.tiny_checkpoints import Recipe, make_checkpoint

HEADER = "from webui.plugins import hookimpl\n"
REQUEST = GenerationRequest(prompt="a cat")


def write_extension(root: Path, folder: str, code: str | None = "", *, name: str | None = None, api: str = "1.0",
                    manifest: str | None = None) -> Path:
    """An extension folder: a manifest (by default name = folder) and an __init__.py (None: none)."""
    path = root / folder
    path.mkdir(parents=True)
    if manifest is None:
        manifest = f'name: {name or folder}\nversion: "1.0"\ndescription: test\napi_version: "{api}"\n'
    (path / "extension.yaml").write_text(manifest, encoding="utf-8")
    if code is not None:
        (path / "__init__.py").write_text(HEADER + textwrap.dedent(code), encoding="utf-8")
    return path


def load(tmp_path: Path, *, builtin: bool = False) -> ExtensionManager:
    manager = ExtensionManager(
        builtin_dir=tmp_path / "builtin" if builtin else None, extensions_dir=tmp_path / "extensions",
        data_dir=tmp_path / "data", models_dir=tmp_path / "models", state=ExtensionState(tmp_path / "state.json"))
    manager.load()
    return manager


def statuses(manager: ExtensionManager) -> dict[str, str]:
    return {r.name: r.status for r in manager.records}


def white() -> Image.Image:
    return Image.new("RGB", (8, 8), "white")


@pytest.fixture
def ext(tmp_path) -> Path:
    return tmp_path / "extensions"


RAISING = """
CALLS = []

@hookimpl
def rewrite_request(request):
    raise ValueError("alpha broke")

@hookimpl
def postprocess_image(image, index):
    CALLS.append(index)
    raise ValueError("alpha broke the image")

@hookimpl
def infotext_fields():
    CALLS.append("infotext")
    return {"Alpha": "yes"}
"""

WORKING = """
from dataclasses import replace
from PIL import Image

CALLS = []

@hookimpl
def rewrite_request(request):
    return replace(request, prompt=request.prompt + ", by beta")

@hookimpl
def postprocess_image(image, index):
    CALLS.append(index)
    return Image.new("RGB", image.size, "red")

@hookimpl
def infotext_fields(request):
    return {"Beta": request.prompt}
"""


# --- isolation and the three-failures rule -------------------------------------------------------


def test_a_raising_hook_is_reported_and_the_other_extensions_still_run(tmp_path, ext):
    write_extension(ext, "alpha", RAISING)
    write_extension(ext, "beta", WORKING)
    manager = load(tmp_path)
    hooks = manager.hooks_for_job()

    request = hooks.rewrite_request(REQUEST, None)
    image = hooks.postprocess_image(white(), request, 0)

    assert request.prompt == "a cat, by beta"
    assert image.getpixel((0, 0)) == (255, 0, 0)
    assert hooks.notices == ["Extension 'alpha' failed in rewrite_request: ValueError: alpha broke",
                             "Extension 'alpha' failed in postprocess_image: ValueError: alpha broke the image"]
    alpha = manager.record("alpha")
    assert alpha.status == "loaded" and alpha.failures == 2 and "alpha broke the image" in alpha.error


def test_three_consecutive_failures_stop_the_extension_until_restart(tmp_path, ext):
    write_extension(ext, "alpha", RAISING)
    write_extension(ext, "beta", WORKING)
    manager = load(tmp_path)
    alpha, beta = manager.record("alpha").module, manager.record("beta").module

    notices = []
    for job in range(MAX_FAILURES + 2):
        hooks = manager.hooks_for_job()
        assert hooks.postprocess_image(white(), REQUEST, job).getpixel((0, 0)) == (255, 0, 0)
        notices.append(hooks.notices)

    assert alpha.CALLS == [0, 1, 2] and beta.CALLS == [0, 1, 2, 3, 4]
    assert manager.record("alpha").status == "stopped" and not manager.record("alpha").active
    assert "failed 3 times in a row and is disabled until the app restarts" in notices[2][0]
    assert notices[3] == [] and notices[4] == []
    assert manager.notices == notices[2]  # app-wide, for the Extensions tab
    assert [row["status"] for row in manager.rows()] == ["stopped", "loaded"]
    # None of its hooks is called any more.
    hooks = manager.hooks_for_job()
    assert hooks.infotext_fields(REQUEST) == {"Beta": "a cat"} and "infotext" not in alpha.CALLS


def test_a_successful_call_resets_the_failure_count(tmp_path, ext):
    write_extension(ext, "flaky", """
        @hookimpl
        def postprocess_image(image, index):
            if index % 3 != 2:  # two failures, one success, two failures, ...
                raise RuntimeError(f"flaky {index}")
            return None

        @hookimpl
        def on_step(step):
            if step.step % 3 != 0:
                raise RuntimeError("flaky step")
    """)
    manager = load(tmp_path)
    hooks = manager.hooks_for_job()
    for index in range(9):
        hooks.postprocess_image(white(), REQUEST, index)
    assert len(hooks.notices) == 6 and manager.record("flaky").status == "loaded"

    class Event:
        def __init__(self, step):
            self.step, self.total_steps, self.batch_index, self.phase, self.latents = step, 9, 0, "sampling", None

    for step in range(1, 10):
        hooks.on_step(Event(step))
    assert manager.record("flaky").status == "loaded" and manager.record("flaky").failures == 0


def test_wrong_return_types_count_as_failures_and_are_ignored(tmp_path, ext):
    write_extension(ext, "wrong1", """
        @hookimpl
        def rewrite_request(request):
            return {"prompt": "not a request"}

        @hookimpl
        def postprocess_image(image):
            return "not an image"
    """)
    write_extension(ext, "wrong2", """
        @hookimpl
        def wrap_model(model):
            return 42

        @hookimpl
        def infotext_fields():
            return ["not", "a", "dict"]
    """)
    manager = load(tmp_path)
    hooks = manager.hooks_for_job()
    image = white()
    def unet(x, t, context):
        return x

    assert hooks.rewrite_request(REQUEST, None) is REQUEST
    assert hooks.postprocess_image(image, REQUEST, 0) is image
    assert hooks.wrap_model(unet, REQUEST, None, SamplingState()) is unet
    assert hooks.infotext_fields(REQUEST) == {}
    assert [n.split(":")[0] for n in hooks.notices] == [f"Extension '{name}' failed in {hook}" for name, hook in (
        ("wrong1", "rewrite_request"), ("wrong1", "postprocess_image"), ("wrong2", "wrap_model"),
        ("wrong2", "infotext_fields"))]
    assert "returned dict, expected a GenerationRequest or None" in hooks.notices[0]
    assert "expected a PIL image" in hooks.notices[1] and "expected a callable" in hooks.notices[2]


# --- what is refused at load ---------------------------------------------------------------------


GOOD = """
@hookimpl
def infotext_fields(context):
    return {"From": context.name}
"""


def infotext_from(manager: ExtensionManager) -> list[str]:
    return [value["From"] for _, value in manager.call("infotext_fields", {"request": REQUEST})]


def test_an_unknown_hook_name_fails_that_extension_and_names_it(tmp_path, ext):
    write_extension(ext, "good", GOOD)
    write_extension(ext, "typo", """
        @hookimpl
        def not_a_hook():
            pass

        @hookimpl
        def infotext_fields():
            return {"From": "typo"}
    """)
    manager = load(tmp_path)
    typo = manager.record("typo")
    assert statuses(manager) == {"good": "loaded", "typo": "failed"}
    assert "'not_a_hook' is not a hook of this extension API" in typo.error and "postprocess_image" in typo.error
    assert infotext_from(manager) == ["good"]
    assert not manager.pm.is_registered(typo.module) and manager.pm.get_plugin("typo") is None


def test_an_argument_the_hook_does_not_have_fails_that_extension(tmp_path, ext):
    write_extension(ext, "good", GOOD)
    write_extension(ext, "misspelt", """
        @hookimpl
        def infotext_fields():  # registered before the bad one (alphabetical): must be taken back
            return {"From": "misspelt"}

        @hookimpl
        def postprocess_image(image, colour):
            return image
    """)
    manager = load(tmp_path)
    error = manager.record("misspelt").error
    assert statuses(manager) == {"good": "loaded", "misspelt": "failed"}
    assert "could not be loaded" in error and "colour" in error and "postprocess_image" in error
    assert infotext_from(manager) == ["good"]
    assert manager.hooks_for_job().postprocess_image(white(), REQUEST, 0).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("option", ["hookwrapper=True", "wrapper=True"])
def test_hook_wrappers_are_refused(tmp_path, ext, option):
    write_extension(ext, "good", GOOD)
    write_extension(ext, "wrapping", f"""
        @hookimpl({option})
        def infotext_fields():
            result = yield
            return result
    """)
    manager = load(tmp_path)
    assert statuses(manager) == {"good": "loaded", "wrapping": "failed"}
    assert "'infotext_fields' is a hook wrapper; wrappers are not supported" in manager.record("wrapping").error
    assert infotext_from(manager) == ["good"]


@pytest.mark.parametrize("code, expected", [
    ("raise RuntimeError('cannot start')\n", "could not be loaded: RuntimeError: cannot start"),
    ("def broken(:\n    pass\n", "could not be loaded: SyntaxError"),
    ("import not_a_real_package_for_webui\n", "could not be loaded: ModuleNotFoundError: No module named "
                                               "'not_a_real_package_for_webui'"),
])
def test_an_extension_whose_import_fails_is_failed_and_the_others_load(tmp_path, ext, code, expected):
    write_extension(tmp_path / "builtin", "builtin_ok", GOOD)
    write_extension(ext, "broken", code)
    write_extension(ext, "good", GOOD)
    manager = load(tmp_path, builtin=True)
    assert statuses(manager) == {"builtin_ok": "loaded", "broken": "failed", "good": "loaded"}
    assert manager.record("broken").error.startswith(expected)
    assert [r.source for r in manager.records] == ["builtin", "installed", "installed"]
    assert infotext_from(manager) == ["builtin_ok", "good"]
    assert MODULE_PREFIX + "broken" not in sys.modules


@pytest.mark.parametrize("api, advice", [("2.0", "it needs a newer web UI"), ("1.5", "update the web UI to use it"),
                                         ("0.9", "written for an older API")])
def test_an_incompatible_api_version_is_refused_without_importing_the_code(tmp_path, ext, api, advice):
    marker = tmp_path / "imported"
    write_extension(ext, "future", f"open({str(marker)!r}, 'w').close()\n", api=api)
    write_extension(ext, "now", GOOD, api="1")
    manager = load(tmp_path)
    future = manager.record("future")
    assert statuses(manager) == {"future": "refused", "now": "loaded"}
    assert f"future: api_version: targets extension API {api}, but this web UI offers 1.1" in future.error
    assert advice in future.error and not marker.exists() and future.module is None


def test_a_second_extension_with_the_same_name_is_refused(tmp_path, ext):
    write_extension(tmp_path / "builtin", "first", GOOD, name="same")
    write_extension(ext, "a_copy", 'raise RuntimeError("never")\n', name="same")
    write_extension(ext, "b_copy", GOOD, name="same")
    manager = load(tmp_path, builtin=True)
    assert [(r.name, r.source, r.status) for r in manager.records] == [
        ("same", "builtin", "loaded"), ("same", "installed", "refused"), ("same", "installed", "refused")]
    assert all(r.error == "another extension is already named 'same'" for r in manager.records[1:])
    assert [(r.folder.name, value) for r, value in manager.call("infotext_fields", {"request": REQUEST})] == [
        ("first", {"From": "same"})]


@pytest.mark.parametrize("manifest, expected", [
    (None, "not found; every extension folder needs an extension.yaml"),
    ('name: bad\nversion: "1"\napi_version: "1.0"\nauthor: me\n', "unknown key(s) author"),
    ('name: Bad Name\nversion: "1"\napi_version: "1.0"\n', "name: 'Bad Name' is not allowed"),
    ('version: "1"\napi_version: "1.0"\n', "missing required key(s) name"),
    ("name: [unclosed\n", "cannot be read"),
])
def test_a_missing_or_bad_manifest_fails_that_extension(tmp_path, ext, manifest, expected):
    folder = write_extension(ext, "odd", GOOD, manifest=manifest or "")
    if manifest is None:
        (folder / "extension.yaml").unlink()
    write_extension(ext, "good", GOOD)
    manager = load(tmp_path)
    assert statuses(manager) == {"odd": "failed", "good": "loaded"}
    assert expected in manager.record("odd").error and "extension.yaml" in manager.record("odd").error
    assert infotext_from(manager) == ["good"]


def test_a_folder_without_init_is_failed(tmp_path, ext):
    write_extension(ext, "empty", None)
    manager = load(tmp_path)
    assert statuses(manager) == {"empty": "failed"} and "has no __init__.py" in manager.record("empty").error


def test_hidden_and_underscore_folders_are_ignored(tmp_path, ext):
    write_extension(ext, ".installing-0123abcd", 'raise RuntimeError("half installed")\n', name="staged")
    write_extension(ext, "__pycache__", None, name="cache")
    write_extension(ext, "good", GOOD)
    (ext / "notes.txt").write_text("not an extension")
    manager = load(tmp_path)
    assert statuses(manager) == {"good": "loaded"}


def test_a_failing_startup_is_counted_and_the_app_goes_on(tmp_path, ext):
    write_extension(ext, "alpha", """
        SEEN = []

        @hookimpl
        def startup(context):
            SEEN.append((context.name, context.folder, context.data_dir, context.models_dir))
    """)
    write_extension(ext, "beta", """
        @hookimpl
        def startup():
            raise OSError("no data")
    """)
    manager = load(tmp_path)
    assert manager.record("alpha").module.SEEN == [("alpha", ext / "alpha", tmp_path / "data" / "alpha",
                                                    tmp_path / "models")]
    assert statuses(manager) == {"alpha": "loaded", "beta": "loaded"}
    beta = manager.record("beta")
    assert beta.failures == 1 and "failed in startup: OSError: no data" in beta.error


# --- enable / disable ----------------------------------------------------------------------------


def test_disabling_is_persisted_and_takes_effect_on_the_next_load(tmp_path, ext):
    write_extension(ext, "alpha", GOOD)
    write_extension(ext, "beta", GOOD + f"open({str(tmp_path / 'beta-imports')!r}, 'a').write('x')\n")
    manager = load(tmp_path)

    assert manager.set_enabled("beta", False) == "beta will be disabled when the app restarts."
    assert json.loads((tmp_path / "state.json").read_text()) == {"disabled": ["beta"]}
    assert infotext_from(manager) == ["alpha", "beta"]  # still loaded until the restart
    assert [row["status"] for row in manager.rows()] == ["loaded", "loaded (disabled at next start)"]

    restarted = load(tmp_path)
    assert statuses(restarted) == {"alpha": "loaded", "beta": "disabled"}
    assert restarted.record("beta").module is None and (tmp_path / "beta-imports").read_text() == "x"
    assert infotext_from(restarted) == ["alpha"]

    assert restarted.set_enabled("beta", True) == "beta will be enabled when the app restarts."
    assert json.loads((tmp_path / "state.json").read_text()) == {"disabled": []}
    again = load(tmp_path)
    assert statuses(again) == {"alpha": "loaded", "beta": "loaded"} and infotext_from(again) == ["alpha", "beta"]

    with pytest.raises(ExtensionError, match="no extension is named 'gamma'"):
        again.set_enabled("gamma", False)


# --- the per-job hooks ---------------------------------------------------------------------------


def parsed(text: str, weight: float, steps: int) -> ParsedPrompt:
    return ParsedPrompt((PromptPart(weight, (ScheduledText(steps, (WeightedText(text),)),)),))


def test_parse_prompt_the_first_answer_wins_and_a_wrong_type_falls_back(tmp_path, ext):
    write_extension(ext, "a_wrong", """
        @hookimpl
        def parse_prompt(text):
            return "(" + text + ")"
    """)
    write_extension(ext, "b_empty", """
        from webui.engine.prompts import ParsedPrompt

        @hookimpl
        def parse_prompt():
            return ParsedPrompt(())
    """)
    manager = load(tmp_path)
    hooks = manager.hooks_for_job()
    assert hooks.parse_prompt("a cat", 20, False) == ParsedPrompt.literal("a cat", 20)
    assert [n.split(":")[0] for n in hooks.notices] == ["Extension 'a_wrong' failed in parse_prompt",
                                                        "Extension 'b_empty' failed in parse_prompt"]
    assert manager.record("a_wrong").failures == 1 and manager.record("b_empty").failures == 1

    write_extension(ext, "c_double", """
        from webui.engine.prompts import ParsedPrompt, PromptPart, ScheduledText, WeightedText

        @hookimpl
        def parse_prompt(text, steps, is_negative):
            weight = 1.0 if is_negative else 2.0
            return ParsedPrompt((PromptPart(weight, (ScheduledText(steps, (WeightedText(text),)),)),))
    """)
    write_extension(ext, "d_never", """
        CALLS = []

        @hookimpl
        def parse_prompt(text):
            CALLS.append(text)
            return None
    """)
    manager = load(tmp_path)
    hooks = manager.hooks_for_job()
    assert hooks.parse_prompt("a cat", 20, False) == parsed("a cat", 2.0, 20)
    assert hooks.parse_prompt("ugly", 20, True) == parsed("ugly", 1.0, 20)
    assert manager.record("d_never").module.CALLS == []  # c_double answered first


WRAPPER = """
SEEN = []

@hookimpl
def wrap_model(model, request, bundle, context):
    SEEN.append((model, request.prompt, bundle))

    def wrapped(x, t, context, **kwargs):
        return model(x, t, context, **kwargs) {op}

    return wrapped
"""


def test_wrap_model_wrappers_chain_in_load_order(tmp_path, ext):
    write_extension(ext, "alpha", WRAPPER.format(op="+ 1"))
    write_extension(ext, "beta", WRAPPER.format(op="* 10"))
    write_extension(ext, "gamma", """
        @hookimpl
        def wrap_model(model):
            raise RuntimeError("cannot wrap")
    """)
    manager = load(tmp_path)
    hooks = manager.hooks_for_job()
    calls = []

    def unet(x, t, context, **kwargs):
        calls.append((x, t, context, kwargs))
        return x

    bundle = object()
    wrapped = hooks.wrap_model(unet, REQUEST, bundle, SamplingState())
    assert wrapped(1, 0, "text", y=5) == 20  # beta(alpha(unet)): (1 + 1) * 10; the last loaded runs outermost
    assert calls == [(1, 0, "text", {"y": 5})]
    alpha, beta = manager.record("alpha").module, manager.record("beta").module
    assert alpha.SEEN == [(unet, "a cat", bundle)]
    assert beta.SEEN[0][0] is not unet and beta.SEEN[0][0](1, 0, None) == 2  # beta was given alpha's wrapper
    assert hooks.notices == ["Extension 'gamma' failed in wrap_model: RuntimeError: cannot wrap"]


def test_hooks_take_any_subset_of_their_arguments_and_context_warns_for_this_job_only(tmp_path, ext):
    write_extension(ext, "subset", """
        SEEN = []

        @hookimpl
        def postprocess_image(index, context):
            SEEN.append((index, context.name))
            context.warn(f"image {index} looked odd")

        @hookimpl
        def infotext_fields():
            return {"Count": 3, 7: True}

        @hookimpl
        def rewrite_request(request, context=None):
            SEEN.append(("defaulted context", context))
    """)
    manager = load(tmp_path)
    first = manager.hooks_for_job()
    first.rewrite_request(REQUEST, None)
    first.postprocess_image(white(), REQUEST, 4)
    assert first.infotext_fields(REQUEST) == {"Count": "3", "7": "True"}
    assert first.notices == ["subset: image 4 looked odd"]
    # A parameter with a default is never passed (as the guide says).
    assert manager.record("subset").module.SEEN == [("defaulted context", None), (4, "subset")]
    second = manager.hooks_for_job()
    assert second.notices == [] and manager.record("subset").failures == 0


def test_an_extension_installed_as_a_package_is_found_by_its_entry_point(tmp_path, ext, monkeypatch):
    site = tmp_path / "site"
    package = site / "webui_test_pkg_ext"
    package.mkdir(parents=True)
    (package / "extension.yaml").write_text('name: pkgdemo\nversion: "2.0"\napi_version: "1.0"\n')
    (package / "__init__.py").write_text(HEADER + GOOD)
    info = site / "webui_test_pkg_ext-2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: webui-test-pkg-ext\nVersion: 2.0\n")
    (info / "entry_points.txt").write_text("[webui.extensions]\npkgdemo = webui_test_pkg_ext\n")
    monkeypatch.syspath_prepend(str(site))
    write_extension(ext, "zzz_folder", GOOD)
    try:
        manager = load(tmp_path)
        assert [(r.name, r.source, r.status, r.version) for r in manager.records] == [
            ("zzz_folder", "installed", "loaded", "1.0"), ("pkgdemo", "package", "loaded", "2.0")]
        assert manager.record("pkgdemo").folder == package and infotext_from(manager) == ["zzz_folder", "pkgdemo"]
    finally:
        sys.modules.pop("webui_test_pkg_ext", None)


# --- through the real pipeline on a tiny model ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sd1(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny-sd1.safetensors"
    save_file(make_checkpoint(Recipe("sd1"), seed=42), str(path))
    return load_checkpoint(path)


def test_a_generation_survives_a_failing_extension_and_on_step_sees_every_step(tmp_path, ext, tiny_sd1):
    write_extension(ext, "broken_post", """
        @hookimpl
        def postprocess_image(image):
            raise RuntimeError("no post today")
    """)
    write_extension(ext, "counter", """
        STEPS = []

        @hookimpl
        def on_step(step):
            STEPS.append((step.step, step.total_steps, step.batch_index, step.phase, tuple(step.latents.shape)))
    """)
    manager = load(tmp_path)
    request = GenerationRequest(prompt="a cat", width=64, height=64, steps=2, seed=3, batch_count=2)

    result = generate(request, PipelineContext(tiny_sd1, hooks=manager.hooks_for_job()))
    plain = generate(request, PipelineContext(tiny_sd1))

    assert len(result.images) == 2 and result.images[0].size == (64, 64) and result.seeds == [3, 4]
    assert result.notices == ["Extension 'broken_post' failed in postprocess_image: RuntimeError: no post today"] * 2
    assert manager.record("counter").module.STEPS == [
        (1, 2, 0, "sampling", (1, 4, 8, 8)), (2, 2, 0, "sampling", (1, 4, 8, 8)),
        (1, 2, 1, "sampling", (1, 4, 8, 8)), (2, 2, 1, "sampling", (1, 4, 8, 8))]
    for got, expected in zip(result.images, plain.images):  # the failing extension changed nothing
        assert got.tobytes() == expected.tobytes()
    assert result.infotexts == plain.infotexts


def test_bad_weight_patches_leave_out_that_extension_only(tmp_path, ext, tiny_sd1):
    write_extension(ext, "bad_target", """
        import torch
        from webui.engine.patching import WeightPatch

        @hookimpl
        def weight_patches(bundle):
            return [WeightPatch("unet.no.such.weight", lambda: torch.zeros(1), 1.0, "bad_target")]
    """)
    write_extension(ext, "not_a_list", """
        @hookimpl
        def weight_patches():
            return "patches"
    """)
    manager = load(tmp_path)
    request = GenerationRequest(prompt="a cat", width=64, height=64, steps=2, seed=3)
    result = generate(request, PipelineContext(tiny_sd1, hooks=manager.hooks_for_job()))
    plain = generate(request, PipelineContext(tiny_sd1))
    assert result.images[0].tobytes() == plain.images[0].tobytes()
    assert [n.split(":")[0] for n in result.notices] == ["Extension 'bad_target' failed in weight_patches",
                                                         "Extension 'not_a_list' failed in weight_patches"]
    assert "unet.no.such.weight" in result.notices[0]
