"""A fake `UIServices` for UI tests: no torch, solid-colour images after a few sleeping steps.

It validates submitted values with the real `GenerationRequest` (so the UI's dict must satisfy the
contract: field names, types), records them, and runs one job at a time on a worker thread.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import replace
from typing import Any

from PIL import Image

from webui.engine.request import GenerationRequest
from webui.engine.sampling.registry import SAMPLERS, SCHEDULES
from webui.errors import RequestError, WebUIError
from webui.ui.services import JobStatus, SettingSpec

COLOURS = ["#d04040", "#40a040", "#4060d0", "#d0a020", "#a040c0", "#20a0a0"]
DEPTH_NOTE = "is an SD 2 depth model (fake)"


class FakeServices:
    def __init__(self, step_seconds: float = 0.03, max_image_side: int = 256) -> None:
        self.step_seconds = step_seconds
        self.max_image_side = max_image_side  # keeps the fake's PNGs small
        self.submitted: list[dict[str, Any]] = []  # (values as received) per submit
        self.submitted_models: list[tuple[str | None, str | None]] = []
        self.owners: list[str] = []
        self.requests: list[GenerationRequest] = []
        self.interrupted: list[str] = []
        self.saved_settings: list[dict[str, Any]] = []
        self.refresh_count = 0
        self.extension_rows: list[dict[str, Any]] = []
        self._settings: dict[str, Any] = {"outdir": "outputs", "attention": "auto", "preview_every": 5,
                                          "save_images": True, "jpeg_quality": 80.0}
        self._jobs: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._gpu = threading.Lock()
        self._checkpoints = ["fake-v1.safetensors", "fake-inpainting.safetensors"]
        self.initial: dict[str, Any] = {}  # what initial_values() returns (the fields the tabs start from)

    # Models
    def checkpoints(self) -> list[str]:
        return list(self._checkpoints)

    def vaes(self) -> list[str]:
        return ["Automatic", "fake-vae.safetensors"]

    def refresh_models(self) -> None:
        self.refresh_count += 1
        if "fake-new.safetensors" not in self._checkpoints:
            self._checkpoints.append("fake-new.safetensors")

    def default_checkpoint(self) -> str | None:
        return self._checkpoints[0]

    def depth_support(self, checkpoint: str | None) -> str:
        return f"**{checkpoint}** {DEPTH_NOTE}"

    def initial_values(self) -> dict[str, Any]:
        return dict(self.initial)

    # Choices and helpers
    def samplers(self) -> list[str]:
        return [s.name for s in SAMPLERS]

    def schedules(self) -> list[str]:
        return list(SCHEDULES)

    def presets(self) -> dict[str, dict[str, Any]]:
        return {"tiny": {"width": 128, "height": 192, "steps": 4, "cfg_scale": 5.5, "sampler_name": "Euler a"}}

    def count_tokens(self, text: str) -> tuple[int, int]:
        tokens = len(text.replace(",", " , ").split())
        return tokens, 75 * max(1, -(-tokens // 75))

    # Jobs
    def submit(self, owner: str, checkpoint: str | None, vae: str | None, values: dict[str, Any]) -> str:
        self.submitted.append(dict(values))
        self.submitted_models.append((checkpoint, vae))
        self.owners.append(owner)
        if checkpoint not in self._checkpoints:
            raise RequestError("checkpoint", checkpoint, "one of " + ", ".join(self._checkpoints))
        request = GenerationRequest.from_dict(values)
        self.requests.append(request)
        job_id = f"job-{next(self._ids)}"
        job = {"owner": owner, "status": JobStatus(job_id, "queued", queue_position=1), "interrupt": threading.Event(),
               "skip": threading.Event()}
        with self._lock:
            self._jobs[job_id] = job
        threading.Thread(target=self._run, args=(job, request), daemon=True).start()
        return job_id

    def _job(self, owner: str, job_id: str) -> dict[str, Any]:
        job = self._jobs.get(job_id)
        if job is None or job["owner"] != owner:
            raise WebUIError(f"No job {job_id} for this session.")
        return job

    def status(self, owner: str, job_id: str) -> JobStatus:
        job = self._job(owner, job_id)
        with self._lock:
            return replace(job["status"], preview=list(job["status"].preview), images=list(job["status"].images),
                           infotexts=list(job["status"].infotexts), seeds=list(job["status"].seeds))

    def interrupt(self, owner: str, job_id: str) -> None:
        self.interrupted.append(job_id)
        self._job(owner, job_id)["interrupt"].set()

    def skip(self, owner: str, job_id: str) -> None:
        self._job(owner, job_id)["skip"].set()

    def _run(self, job: dict[str, Any], request: GenerationRequest) -> None:
        status: JobStatus = job["status"]
        with self._gpu:
            base_seed = request.seed if request.seed != -1 else 1000 + int(status.id.split("-")[1])
            size = (min(request.width, self.max_image_side), min(request.height, self.max_image_side))
            for batch in range(request.batch_count):
                with self._lock:
                    status.state, status.queue_position, status.phase = "running", 0, "sampling"
                    status.batch_index, status.batch_count, status.total_steps = batch, request.batch_count, request.steps
                for step in range(1, request.steps + 1):
                    if job["interrupt"].is_set() or job["skip"].is_set():
                        break
                    time.sleep(self.step_seconds)
                    with self._lock:
                        status.step = step
                        status.preview = [Image.new("RGB", (32, 32), COLOURS[step % len(COLOURS)])]
                if job["interrupt"].is_set():
                    break
                if job["skip"].is_set():
                    job["skip"].clear()
                    continue
                for i in range(request.batch_size):
                    seed = base_seed + batch * request.batch_size + i
                    text = f"{request.prompt}\nSteps: {request.steps}, Sampler: {request.sampler_name}, Seed: {seed}"
                    image = Image.new("RGB", size, COLOURS[seed % len(COLOURS)])
                    image.info["parameters"] = text
                    with self._lock:
                        status.images.append(image)
                        status.infotexts.append(text)
                        status.seeds.append(seed)
            with self._lock:
                status.preview = []
                status.state = "interrupted" if job["interrupt"].is_set() else "done"

    # PNG Info
    def read_infotext(self, image: Image.Image) -> tuple[str | None, dict[str, Any]]:
        image.load()
        text = image.info.get("parameters")
        if not text:
            return None, {}
        prompt, _, rest = text.partition("\n")
        values: dict[str, Any] = {"prompt": prompt}
        for item in rest.replace("\n", ", ").split(", "):
            key, _, value = item.partition(": ")
            if key == "Negative prompt":
                values["negative_prompt"] = value
            elif key == "Steps":
                values["steps"] = int(value)
            elif key == "Sampler":
                values["sampler_name"] = value
            elif key == "Seed":
                values["seed"] = int(value)
            elif key == "CFG scale":
                values["cfg_scale"] = float(value)
        return text, values

    # Settings and extensions
    def setting_specs(self) -> list[SettingSpec]:
        return [
            SettingSpec("outdir", "Output folder", "text"),
            SettingSpec("attention", "Attention backend", "choice", ("auto", "sdpa", "sliced"), restart_required=True),
            SettingSpec("preview_every", "Live preview every N steps", "int", minimum=0, maximum=100),
            SettingSpec("save_images", "Save images", "bool"),
            SettingSpec("jpeg_quality", "JPEG quality", "float", minimum=1, maximum=100),
        ]

    def settings(self) -> dict[str, Any]:
        return dict(self._settings)

    def save_settings(self, values: dict[str, Any]) -> list[str]:
        self.saved_settings.append(dict(values))
        every = values.get("preview_every")
        if not isinstance(every, int) or not 0 <= every <= 100:
            raise RequestError("preview_every", every, "an integer from 0 to 100")
        notes = []
        if values.get("attention") != self._settings["attention"]:
            notes.append("Attention backend: takes effect after a restart")
        self._settings.update(values)
        return notes

    def extensions(self) -> list[dict[str, Any]]:
        return list(self.extension_rows)

    def extension_access(self) -> bool:
        return True

    def set_extension_enabled(self, name: str, enabled: bool) -> str:
        return f"{name} will be {'enabled' if enabled else 'disabled'} when the app restarts."

    def install_extension(self, url: str) -> str:
        raise WebUIError("the fake services install nothing")

    def extension_requirements(self, name: str) -> list[str]:
        return []

    def install_extension_requirements(self, name: str, confirmed: bool) -> str:
        raise WebUIError("the fake services install nothing")

    def check_extension_updates(self) -> list[dict[str, Any]]:
        return []

    def update_extension(self, name: str) -> str:
        raise WebUIError("the fake services update nothing")

    def uninstall_extension(self, name: str) -> str:
        raise WebUIError("the fake services remove nothing")

    def extension_tabs(self) -> list[tuple[str, Any]]:
        return []

    def extension_controls(self, tab: str) -> list[tuple[str, Any]]:
        return []

    def loras(self) -> list[str]:
        return []

    def embeddings(self) -> list[str]:
        return []
