"""The app's services for the UI (and later the API): models, jobs, PNG info, settings.

Implements `webui.ui.services.UIServices`. Requests are validated here, before anything is queued.
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Any

from PIL import Image

from webui.config import SETTING_SPECS, LaunchOptions, SettingsStore
from webui.engine.models.store import ModelStore
from webui.engine.models.text_encoders import load_clip_tokenizer
from webui.engine.pipelines import PipelineContext, ProgressEvent, generate
from webui.engine.request import GenerationRequest
from webui.engine.sampling.registry import SAMPLERS, SCHEDULES
from webui.errors import RequestError, WebUIError
from webui.jobs import Job, JobQueue
from webui.outputs import infotext_to_fields, parse_infotext, read_infotext
from webui.paths import ModelLibrary
from webui.ui.services import JobStatus, SettingSpec

AUTOMATIC_VAE = "Automatic"
REQUEST_FIELDS = {f.name for f in fields(GenerationRequest)}


class WebUIService:
    def __init__(
        self,
        options: LaunchOptions,
        library: ModelLibrary,
        store: ModelStore,
        settings: SettingsStore,
        presets: dict[str, dict[str, Any]],
    ) -> None:
        self.options = options
        self.library = library
        self.store = store
        self.settings_store = settings
        self._presets = presets
        # The refiner (SDXL's second model) is held beside the main model only while requests use one.
        self.refiner_store = ModelStore(dtype=store.dtype, device=store.device)
        self.jobs = JobQueue(self._run)

    # --- models ----------------------------------------------------------------------------------

    def checkpoints(self) -> list[str]:
        return self.library.names("checkpoints")

    def vaes(self) -> list[str]:
        return [AUTOMATIC_VAE, *self.library.names("vae")]

    def refresh_models(self) -> None:
        self.library.refresh()

    def default_checkpoint(self) -> str | None:
        names = self.checkpoints()
        demo = [n for n in names if Path(n).stem.startswith("webui-demo")]
        return (demo or names or [None])[0]

    # --- choices and helpers ---------------------------------------------------------------------

    def samplers(self) -> list[str]:
        return [s.name for s in SAMPLERS]

    def schedules(self) -> list[str]:
        return list(SCHEDULES)

    def presets(self) -> dict[str, dict[str, Any]]:
        return self._presets

    def count_tokens(self, text: str) -> tuple[int, int]:
        bundle = self.store.current
        tokenizer = bundle.text_encoder.tokenizer if bundle else load_clip_tokenizer()
        count = len(tokenizer.encode(text or "", add_special_tokens=False))
        return count, 75 * max(1, math.ceil(count / 75))

    # --- jobs ------------------------------------------------------------------------------------

    def submit(self, owner: str, checkpoint: str | None, vae: str | None, values: dict[str, Any]) -> str:
        if "depth_map" in values:
            raise WebUIError("Depth-to-image is not built yet: it arrives with SD 2 depth support in a later version.")
        settings = self.settings_store.current
        defaults = {"sampler_name": settings.default_sampler, "scheduler": settings.default_scheduler}
        request = GenerationRequest.from_dict({**defaults, **values})  # validation happens here
        if not checkpoint:
            where = self.library.models_dir / "checkpoints"
            raise RequestError("checkpoint", checkpoint, f"a checkpoint; none is installed yet: put one in {where}")
        checkpoint_path = self.library.path("checkpoints", checkpoint, "checkpoint")
        vae_path = None if not vae or vae == AUTOMATIC_VAE else self.library.path("vae", vae, "vae")
        refiner_path = None
        if request.refiner_checkpoint:
            refiner_path = self.library.path("checkpoints", request.refiner_checkpoint, "refiner_checkpoint")
        job = Job(owner, (request, checkpoint_path, vae_path, refiner_path))
        self.jobs.submit(job)
        return job.id

    def status(self, owner: str, job_id: str) -> JobStatus:
        job = self.jobs.get(owner, job_id)
        return JobStatus(
            id=job.id, state=job.state, queue_position=self.jobs.position(job), step=job.step,
            total_steps=job.total_steps, batch_index=job.batch_index, batch_count=job.batch_count, phase=job.phase,
            preview=list(job.preview), images=list(job.images), infotexts=list(job.infotexts), seeds=list(job.seeds),
            paths=list(job.paths), error=job.error,
        )

    def interrupt(self, owner: str, job_id: str) -> None:
        self.jobs.cancel(owner, job_id)

    def skip(self, owner: str, job_id: str) -> None:
        self.jobs.get(owner, job_id).cancel.skip()

    def _run(self, job: Job) -> None:
        request, checkpoint_path, vae_path, refiner_path = job.payload
        job.phase = "loading model"
        bundle = self.store.load(checkpoint_path, vae_path=vae_path)
        if refiner_path is not None:
            refiner = self.refiner_store.load(refiner_path)
        else:
            refiner = None
            self.refiner_store.unload()
        settings = self.settings_store.current
        job.phase = "sampling"
        job.batch_count = request.batch_count

        def on_progress(event: ProgressEvent) -> None:
            job.phase, job.step, job.total_steps = event.phase, event.step, event.total_steps
            job.batch_index, job.batch_count = event.batch_index, event.batch_count
            if settings.preview_every and (event.step % settings.preview_every == 0 or event.step == event.total_steps):
                job.preview = event.preview()

        output_dir = self.options.outputs_dir / f"{request.mode}-images" if settings.save_images else None
        ctx = PipelineContext(bundle, model_name=checkpoint_path.stem, on_progress=on_progress, cancel=job.cancel,
                              output_dir=output_dir, refiner=refiner)
        if output_dir is not None:
            output_dir.mkdir(parents=True, exist_ok=True)
        result = generate(request, ctx)
        job.images, job.infotexts, job.seeds = result.images, result.infotexts, result.seeds
        job.paths = [str(p) for p in result.paths]
        job.state = "interrupted" if result.interrupted else "done"

    # --- PNG info --------------------------------------------------------------------------------

    def read_infotext(self, image: Image.Image) -> tuple[str | None, dict[str, Any]]:
        image.load()  # PNG text chunks stored after the image data are read only with the pixels
        text = read_infotext(image)
        if text is None:
            return None, {}
        values = infotext_to_fields(parse_infotext(text))
        if values.get("enable_hr") and "denoising_strength" in values:
            values["hr_denoising_strength"] = values.pop("denoising_strength")
        return text, {k: v for k, v in values.items() if k in REQUEST_FIELDS}

    # --- settings and extensions -----------------------------------------------------------------

    def setting_specs(self) -> list[SettingSpec]:
        return list(SETTING_SPECS)

    def settings(self) -> dict[str, Any]:
        return {spec.name: getattr(self.settings_store.current, spec.name) for spec in SETTING_SPECS}

    def save_settings(self, values: dict[str, Any]) -> list[str]:
        return self.settings_store.save(values)

    def extensions(self) -> list[dict[str, Any]]:
        return []
