"""The app's service on a tiny model: validation before queueing, owners, progress, PNG info, interrupt."""

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from webui.app import build_service
from webui.config import LaunchOptions
from webui.errors import RequestError
from webui.jobs import JobNotFound

from .engine.models.tiny_checkpoints import Recipe, make_checkpoint


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    (root / "models" / "checkpoints").mkdir(parents=True)
    save_file(make_checkpoint(Recipe("sd1"), seed=1), str(root / "models" / "checkpoints" / "tiny.safetensors"))
    options = LaunchOptions(models_dir=root / "models", outputs_dir=root / "outputs", settings_file=root / "s.json",
                            presets_dir=Path(__file__).resolve().parent.parent / "presets", precision="fp32")
    service = build_service(options)
    yield service
    service.jobs.stop()


def wait(service, owner, job_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = service.status(owner, job_id)
        if status.finished:
            return status
        time.sleep(0.05)
    raise TimeoutError(job_id)


SMALL = dict(prompt="a red circle", width=64, height=64, steps=3, seed=9)


def test_generate_saves_images_with_infotext(service):
    assert service.checkpoints() == ["tiny.safetensors"] and service.default_checkpoint() == "tiny.safetensors"
    job = service.submit("ann", "tiny.safetensors", "Automatic", {**SMALL, "batch_size": 2})
    status = wait(service, "ann", job)
    assert status.state == "done" and status.seeds == [9, 10] and len(status.images) == 2
    assert all(Path(p).is_file() for p in status.paths) and "txt2img-images" in status.paths[0]
    text, values = service.read_infotext(Image.open(status.paths[1]))
    assert "Seed: 10" in text and values["seed"] == 10 and values["prompt"] == "a red circle"
    assert values["width"] == 64 and values["sampler_name"] == "DPM++ 2M"


def test_bad_values_are_refused_before_queueing(service):
    with pytest.raises(RequestError, match="steps"):
        service.submit("ann", "tiny.safetensors", None, {**SMALL, "steps": 0})
    with pytest.raises(RequestError, match="checkpoint: '../tiny' is not allowed"):
        service.submit("ann", "../tiny", None, SMALL)
    with pytest.raises(RequestError, match="vae"):
        service.submit("ann", "tiny.safetensors", "/etc/passwd", SMALL)


def test_a_user_sees_and_cancels_only_their_own_jobs(service):
    job = service.submit("ann", "tiny.safetensors", None, {**SMALL, "steps": 40, "batch_count": 3})
    with pytest.raises(JobNotFound):
        service.status("bob", job)
    with pytest.raises(JobNotFound):
        service.interrupt("bob", job)
    deadline = time.monotonic() + 30
    while service.status("ann", job).step < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    progress = service.status("ann", job)
    assert progress.state == "running" and progress.total_steps == 40 and progress.preview
    service.interrupt("ann", job)
    status = wait(service, "ann", job)
    assert status.state == "interrupted" and len(status.images) < 3


def test_a_failed_job_reports_and_the_next_one_runs(service, tmp_path):
    bad = service.library.models_dir / "checkpoints" / "broken.safetensors"
    bad.write_bytes(b"\x00" * 64)
    service.refresh_models()
    job = service.submit("ann", "broken.safetensors", None, SMALL)
    status = wait(service, "ann", job)
    assert status.state == "failed" and "broken.safetensors" in status.error
    assert wait(service, "ann", service.submit("ann", "tiny.safetensors", None, SMALL)).state == "done"
    bad.unlink()
    service.refresh_models()


def test_token_count_and_presets(service):
    assert service.count_tokens("a photo of a cat") == (5, 75)
    assert service.count_tokens("word " * 80) == (80, 150)
    assert "demo" in service.presets()
    assert service.save_settings({"preview_every": 2}) == ["Settings saved."]
    assert service.settings()["preview_every"] == 2


def test_sdxl_with_a_refiner_through_the_service(tmp_path):
    root = tmp_path
    (root / "models" / "checkpoints").mkdir(parents=True)
    save_file(make_checkpoint(Recipe("sdxl"), seed=1), str(root / "models" / "checkpoints" / "xl.safetensors"))
    save_file(make_checkpoint(Recipe("sdxl_refiner"), seed=2), str(root / "models" / "checkpoints" / "xl-ref.safetensors"))
    options = LaunchOptions(models_dir=root / "models", outputs_dir=root / "outputs", settings_file=root / "s.json",
                            presets_dir=Path(__file__).resolve().parent.parent / "presets", precision="fp32")
    service = build_service(options)
    try:
        with pytest.raises(RequestError, match="refiner_checkpoint"):
            service.submit("ann", "xl", None, {**SMALL, "refiner_checkpoint": "nope"})
        job = service.submit("ann", "xl", None, {**SMALL, "steps": 5, "refiner_checkpoint": "xl-ref",
                                                 "refiner_switch_at": 0.6})
        status = wait(service, "ann", job)
        assert status.state == "done", status.error
        assert "Refiner: xl-ref" in status.infotexts[0] and "Refiner switch at: 0.6" in status.infotexts[0]
        assert service.refiner_store.current is not None
        assert wait(service, "ann", service.submit("ann", "xl", None, SMALL)).state == "done"
        assert service.refiner_store.current is None  # freed when no longer asked for
    finally:
        service.jobs.stop()


def test_embeddings_are_listed_and_prompt_syntax_works_through_the_builtins(service):
    import torch

    folder = service.library.models_dir / "embeddings"
    folder.mkdir(exist_ok=True)
    save_file({"emb_params": torch.randn(2, 64)}, str(folder / "mystyle.safetensors"))
    service.refresh_models()
    assert service.embeddings() == ["mystyle"]
    assert {row["name"]: row["status"] for row in service.extensions()} == {
        "controlnet": "loaded", "lora": "loaded", "prompt_weighting": "loaded"}
    images = []
    for prompt in ("a mystyle circle", "a (mystyle:1.5) circle AND a square:0.5", "a [mystyle:circle:1]"):
        status = wait(service, "ann", service.submit("ann", "tiny.safetensors", None, {**SMALL, "prompt": prompt}))
        assert status.state == "done" and not status.notices, (prompt, status.error, status.notices)
        assert status.infotexts[0].startswith(prompt + "\n")
        images.append(np.asarray(status.images[0], dtype=np.int16))
    assert all(np.abs(a - b).mean() > 0 for a, b in zip(images, images[1:]))


def service_with(tmp_path, *checkpoints):
    """A service over stand-in checkpoint files (listed by name, never loaded), beside the demo tokenizer folder."""
    folder = tmp_path / "models" / "checkpoints"
    (folder / "webui-demo.tokenizer").mkdir(parents=True)
    for name in ("vocab.json", "merges.txt"):
        (folder / "webui-demo.tokenizer" / name).write_text("{}")
    for name in checkpoints:
        (folder / name).write_bytes(b"stand-in")
    options = LaunchOptions(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs",
                            settings_file=tmp_path / "s.json", extensions_dir=tmp_path / "extensions",
                            presets_dir=Path(__file__).resolve().parent.parent / "presets", precision="fp32")
    return build_service(options)


def test_the_demo_model_is_the_default_and_sets_the_starting_values_only_when_alone(tmp_path):
    alone = service_with(tmp_path / "alone", "webui-demo.safetensors")
    try:
        assert alone.checkpoints() == ["webui-demo.safetensors"]  # not its tokenizer folder
        assert alone.default_checkpoint() == "webui-demo.safetensors"
        initial = alone.initial_values()
        assert initial == alone.presets()["demo"]
        assert (initial["width"], initial["height"]) == (128, 128)
    finally:
        alone.jobs.stop()
    beside = service_with(tmp_path / "beside", "webui-demo.safetensors", "zz-mine.safetensors", "my-sd15.ckpt")
    try:
        assert beside.default_checkpoint() == "my-sd15.ckpt"  # the user's first, not the demo model
        assert beside.initial_values() == {}
    finally:
        beside.jobs.stop()
    empty = service_with(tmp_path / "empty")
    try:
        assert empty.default_checkpoint() is None and empty.initial_values() == {}
    finally:
        empty.jobs.stop()


def test_memory_settings_apply_to_the_next_job_and_flags_override_them(tmp_path):
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    save_file(make_checkpoint(Recipe("sd1"), seed=1), str(tmp_path / "models" / "checkpoints" / "tiny.safetensors"))
    service = build_service(LaunchOptions(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs",
                                          settings_file=tmp_path / "s.json", extensions_dir=tmp_path / "extensions",
                                          precision="fp32"))
    try:
        service.save_settings({"attention": "sliced", "vae_precision": "bf16", "vae_tiling": "on"})
        status = wait(service, "ann", service.submit("ann", "tiny.safetensors", None, dict(SMALL)))
        assert status.state == "done", status.error
        bundle = service.store.current
        assert bundle.vae.dtype == torch.bfloat16 and bundle.unet.dtype == torch.float32  # reloaded per network
        assert {m.attention_config.backend for m in bundle.unet.modules() if hasattr(m, "attention_config")} == {"sliced"}
        flagged = replace(service.options, memory=(("attention", "reference"), ("vae_precision", "fp32")))
        service.options = flagged
        policy = service.memory_policy()
        assert policy.attention.backend == "reference" and policy.dtypes.vae == torch.float32
        assert policy.vae_tiling == "on"  # from Settings: no flag given
    finally:
        service.jobs.stop()


# --- ControlNet and depth-to-image through the service -------------------------------------------------


@pytest.fixture(scope="module")
def depth_service(tmp_path_factory):
    from .engine.models.tiny_checkpoints import save_tiny_dpt
    from .extensions.builtin.controlnet.tiny import make_controlnet

    root = tmp_path_factory.mktemp("depth-app")
    models = root / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "controlnet").mkdir()
    save_file(make_checkpoint(Recipe("sd1"), seed=1), str(models / "checkpoints" / "tiny.safetensors"))
    save_file(make_checkpoint(Recipe("sd2", "depth"), seed=2), str(models / "checkpoints" / "v2-depth.safetensors"))
    save_file(make_controlnet(Recipe("sd1"), seed=3), str(models / "controlnet" / "canny.safetensors"))
    save_tiny_dpt(models / "depth" / "tiny-dpt")
    options = LaunchOptions(models_dir=models, outputs_dir=root / "outputs", settings_file=root / "s.json",
                            presets_dir=Path(__file__).resolve().parent.parent / "presets", precision="fp32")
    service = build_service(options)
    yield service
    service.jobs.stop()


def test_the_depth_tab_note_says_which_path_applies(depth_service):
    assert "is an SD 2 depth model" in depth_service.depth_support("v2-depth.safetensors")
    assert "the depth estimator tiny-dpt" in depth_service.depth_support("v2-depth.safetensors")
    note = depth_service.depth_support("tiny.safetensors")
    assert "(SD 1.x) is not a depth model, and models/controlnet has no depth ControlNet" in note


def test_a_depth_job_estimates_the_depth_with_the_installed_estimator(depth_service):
    image = Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[:, None, None], (1, 64, 3)))
    job = depth_service.submit("ann", "v2-depth", None, {**SMALL, "init_image": image, "depth": True})
    status = wait(depth_service, "ann", job)
    assert status.state == "done", status.error
    assert "Depth map: estimated" in status.infotexts[0] and "depth-images" in status.paths[0]


def test_controlnet_units_are_checked_before_queueing_and_read_back(depth_service):
    control = Image.new("RGB", (64, 64))
    control.paste((255, 255, 255), (10, 10, 40, 40))
    bad = {"controlnet": {"units": [{"model": "canny", "image": control, "guidance_start": 2}]}}
    with pytest.raises(RequestError, match=r"controlnet.units\[0\].guidance_start"):
        depth_service.submit("ann", "tiny", None, {**SMALL, "extensions": bad})
    good = {"controlnet": {"units": [{"model": "canny", "image": control, "module": "depth"}]}}
    status = wait(depth_service, "ann", depth_service.submit("ann", "tiny", None, {**SMALL, "extensions": good}))
    assert status.state == "done", status.error
    assert 'ControlNet 0: "Module: depth, Model: canny [' in status.infotexts[0]  # the app's estimator, lent
    _, values = depth_service.read_infotext(Image.open(status.paths[0]))
    assert values["extensions"]["controlnet"]["unit0_model"] == "canny.safetensors"
