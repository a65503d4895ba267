"""AUTOMATIC1111's REST API (`/sdapi/v1`), on our job queue: its routes, request shapes, API defaults and
response shapes, so its clients work unchanged. Each caller sees and stops only their own jobs.

Mounted by `webui.api.mount_api` as its own FastAPI app (own OpenAPI schema at /sdapi/v1/openapi.json).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import torch
from fastapi import FastAPI, Request
from pydantic import BaseModel

from webui.config import SETTING_SPECS
from webui.engine.sampling.registry import SAMPLERS, SCHEDULES
from webui.errors import RequestError, UnknownName
from webui.outputs import parse_infotext, read_infotext
from webui.service import AUTOMATIC_VAE, WebUIService
from webui.ui.services import JobStatus
from webui.uploads import decode_image

from .a1111 import Img2ImgRequest, StrictModel, Translation, Txt2ImgRequest, translate
from .common import JobFailed, b64_jpeg, b64_png, install_error_handlers, owner_of

VERSION = "webui"


@dataclass
class ApiOptions:
    """What the API generates with unless a request overrides it (A1111's `sd_vae`, `CLIP_stop_at_last_layers`;
    its `sd_model_checkpoint` is the app's default checkpoint); set by POST /options, kept until the app restarts."""

    vae: str = AUTOMATIC_VAE
    clip_skip: int = 1


class PngInfoRequest(StrictModel):
    image: str


class ImageResponse(BaseModel):
    images: list[str]
    parameters: dict[str, Any]
    info: str


def build_sdapi(service: WebUIService, options: ApiOptions) -> FastAPI:
    app = FastAPI(title="AUTOMATIC1111-compatible API", version="v1", docs_url="/docs", redoc_url=None)
    install_error_handlers(app)
    extensions = {r.name.lower(): r.name for r in (service.manager.records if service.manager else []) if r.active}

    def generate(request: Request, body: Txt2ImgRequest) -> ImageResponse:
        owner = owner_of(request)
        plan = translate(body, checkpoint=service.default_checkpoint(), vae=options.vae, clip_skip=options.clip_skip,
                         extensions=extensions)
        job_id = service.submit(owner, plan.checkpoint, plan.vae, plan.values, save=plan.save)
        status = service.wait(owner, job_id)
        if status.state == "failed":
            raise JobFailed(status)
        return image_response(body, plan, status)

    @app.post("/txt2img", response_model=ImageResponse)
    def txt2img(request: Request, body: Txt2ImgRequest) -> ImageResponse:
        return generate(request, body)

    @app.post("/img2img", response_model=ImageResponse)
    def img2img(request: Request, body: Img2ImgRequest) -> ImageResponse:
        return generate(request, body)

    @app.post("/png-info")
    def png_info(body: PngInfoRequest) -> dict:
        text = read_infotext(decode_image(body.image, "image"))  # A1111 answers with the raw params, not fields
        if text is None:
            return {"info": "", "items": {}, "parameters": {}}
        return {"info": text, "items": {"parameters": text}, "parameters": parse_infotext(text).a1111_params()}

    @app.get("/progress")
    def progress(request: Request, skip_current_image: bool = False) -> dict:
        return progress_response(service.owner_jobs(owner_of(request)), skip_current_image)

    @app.post("/interrupt")
    def interrupt(request: Request) -> dict:
        owner = owner_of(request)
        for status in service.owner_jobs(owner):
            if not status.finished:
                service.interrupt(owner, status.id)
        return {}

    @app.post("/skip")
    def skip(request: Request) -> dict:
        owner = owner_of(request)
        for status in service.owner_jobs(owner):
            if status.state == "running":
                service.skip(owner, status.id)
        return {}

    @app.get("/options")
    def get_options() -> dict:
        settings = service.settings()
        return {**settings, "sd_model_checkpoint": service.default_checkpoint(),
                "sd_vae": options.vae, "CLIP_stop_at_last_layers": options.clip_skip,
                "samples_save": settings["save_images"], "samples_format": "png",
                "show_progress_every_n_steps": settings["preview_every"]}

    @app.post("/options")
    def set_options(body: dict[str, Any]) -> dict:
        return set_api_options(service, options, body)

    @app.get("/sd-models")
    def sd_models() -> list[dict]:
        return [{"title": name, "model_name": name.rsplit(".", 1)[0], "hash": None, "sha256": None,
                 "filename": name, "config": None} for name in service.checkpoints()]

    @app.get("/sd-vae")
    def sd_vae() -> list[dict]:
        return [{"model_name": name, "filename": name} for name in service.vaes()[1:]]

    @app.get("/samplers")
    def samplers() -> list[dict]:
        return [{"name": s.name, "aliases": list(s.aliases), "options": {}} for s in SAMPLERS]

    @app.get("/schedulers")
    def schedulers() -> list[dict]:
        return [{"name": name.lower().replace(" ", "_"), "label": name, "aliases": None, "default_rho": -1,
                 "need_inner_model": False} for name in SCHEDULES]

    @app.get("/loras")
    def loras() -> list[dict]:
        stems = {name: PurePosixPath(name).stem for name in service.loras()}  # what <lora:...> tags use
        return [{"name": stem, "alias": stem, "path": name, "metadata": {}} for name, stem in stems.items()]

    @app.get("/embeddings")
    def embeddings() -> dict:
        return {"loaded": {name: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": None,
                                  "vectors": None} for name in service.embeddings()}, "skipped": {}}

    @app.post("/refresh-checkpoints")
    def refresh_checkpoints() -> dict:
        service.refresh_models()
        return {}

    app.add_api_route("/refresh-vae", refresh_checkpoints, methods=["POST"])
    app.add_api_route("/refresh-loras", refresh_checkpoints, methods=["POST"])
    app.add_api_route("/refresh-embeddings", refresh_checkpoints, methods=["POST"])

    @app.get("/memory")
    def memory() -> dict:
        return memory_report()

    return app


def image_response(body: Txt2ImgRequest, plan: Translation, status: JobStatus) -> ImageResponse:
    images = [b64_png(image, text) for image, text in zip(status.images, status.infotexts)] if plan.send else []
    echo = body.model_dump()
    if isinstance(body, Img2ImgRequest) and not body.include_init_images:
        echo["init_images"], echo["mask"] = None, None
    return ImageResponse(images=images, parameters=echo, info=json.dumps(info_of(body, plan, status)))


def info_of(body: Txt2ImgRequest, plan: Translation, status: JobStatus) -> dict[str, Any]:
    """A1111's `info` (sent as a JSON string), from the job's own infotexts."""
    params = parse_infotext(status.infotexts[0]).a1111_params() if status.infotexts else {}
    values = plan.values
    count = len(status.seeds)
    return {
        "prompt": values["prompt"], "all_prompts": [values["prompt"]] * count,
        "negative_prompt": values["negative_prompt"], "all_negative_prompts": [values["negative_prompt"]] * count,
        "seed": status.seeds[0] if status.seeds else values["seed"], "all_seeds": list(status.seeds),
        "subseed": values["subseed"], "all_subseeds": [values["subseed"]] * count,
        "subseed_strength": values["subseed_strength"], "width": values["width"], "height": values["height"],
        "sampler_name": params.get("Sampler", values["sampler_name"]), "cfg_scale": values["cfg_scale"],
        "steps": values["steps"], "batch_size": values["batch_size"], "restore_faces": False,
        "face_restoration_model": None, "sd_model_name": params.get("Model"), "sd_model_hash": params.get("Model hash"),
        "sd_vae_name": params.get("VAE"), "sd_vae_hash": params.get("VAE hash"), "seed_resize_from_w": -1,
        "seed_resize_from_h": -1, "denoising_strength": values.get("denoising_strength", values.get("hr_denoising_strength")),
        "extra_generation_params": {}, "index_of_first_image": 0, "infotexts": list(status.infotexts), "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": values["clip_skip"],
        "is_using_inpainting_conditioning": False, "version": VERSION,
        "notices": list(status.notices), "ignored_override_settings": plan.ignored,
        "interrupted": status.state == "interrupted",
    }


def progress_response(jobs: list[JobStatus], skip_image: bool) -> dict[str, Any]:
    """A1111's /progress for the caller's current job (running first, else the next waiting one)."""
    current = next((j for j in jobs if j.state == "running"), None) or next((j for j in jobs if j.state == "queued"),
                                                                             None)
    state = {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": 0,
             "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
    if current is None:
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
    done = (current.batch_index + (current.step / current.total_steps if current.total_steps else 0.0))
    fraction = min(1.0, done / max(1, current.batch_count))
    elapsed = current.elapsed
    eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
    state.update(job=current.id, job_count=sum(not j.finished for j in jobs), job_no=current.batch_index,
                 sampling_step=current.step, sampling_steps=current.total_steps)
    image = None if skip_image or not current.preview else b64_jpeg(current.preview[0])
    text = f"{current.phase} (waiting: position {current.queue_position})" if current.state == "queued" else current.phase
    return {"progress": fraction, "eta_relative": eta, "state": state, "current_image": image, "textinfo": text}


SETTING_NAMES = {spec.name for spec in SETTING_SPECS}
A1111_SETTINGS = {"samples_save": "save_images", "show_progress_every_n_steps": "preview_every"}


def set_api_options(service: WebUIService, options: ApiOptions, body: dict[str, Any]) -> dict:
    """POST /options: the API's model choices, and the app's settings (by our names or A1111's)."""
    settings: dict[str, Any] = {}
    for key, value in body.items():
        if key == "sd_model_checkpoint":
            if not isinstance(value, str):
                raise RequestError(key, value, "a checkpoint name")
            service.choose_default_checkpoint(value, key)  # UnknownName for a name not listed
        elif key == "sd_vae":
            if not isinstance(value, str) or (value != AUTOMATIC_VAE and value not in service.vaes()):
                raise UnknownName(key, value, f"one of {', '.join(service.vaes())}")
            options.vae = value
        elif key == "CLIP_stop_at_last_layers":
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 12:
                raise RequestError(key, value, "an integer from 1 to 12")
            options.clip_skip = value
        elif A1111_SETTINGS.get(key, key) in SETTING_NAMES:
            settings[A1111_SETTINGS.get(key, key)] = value
        else:
            supported = ", ".join(sorted({"sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers",
                                          *A1111_SETTINGS, *SETTING_NAMES}))
            raise RequestError(key, value, f"an option of this server ({supported})")
    if settings:
        service.save_settings(settings)  # RequestError naming the setting for a bad value
    return {}


def memory_report() -> dict[str, Any]:
    """A1111's /memory: system RAM (Linux's /proc/meminfo), and CUDA's when there is a GPU."""
    meminfo = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            meminfo = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.split()[1:]}
    except OSError:
        pass
    total, free = meminfo.get("MemTotal", 0), meminfo.get("MemAvailable", 0)
    report: dict[str, Any] = {"ram": {"free": free, "used": total - free, "total": total}}
    if torch.cuda.is_available():
        free_cuda, total_cuda = torch.cuda.mem_get_info()
        stats = torch.cuda.memory_stats()

        def pair(name: str) -> dict[str, int]:
            return {"current": stats.get(f"{name}_bytes.all.current", 0), "peak": stats.get(f"{name}_bytes.all.peak", 0)}

        report["cuda"] = {"system": {"free": free_cuda, "used": total_cuda - free_cuda, "total": total_cuda},
                          "active": pair("active"), "allocated": pair("allocated"), "reserved": pair("reserved")}
    else:
        report["cuda"] = {"error": "no CUDA device"}
    return report
