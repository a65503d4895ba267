"""The app's services for the UI (and later the API): models, jobs, PNG info, settings.

Implements `webui.ui.services.UIServices`. Requests are validated here, before anything is queued.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from webui.config import MEMORY_FLAGS, SETTING_SPECS, LaunchOptions, SettingsStore
from webui.engine.memory.devices import choose_dtypes
from webui.engine.memory.policy import MemoryPolicy, policy_from_settings
from webui.engine.models.depth_estimator import DepthEstimatorStore
from webui.engine.models.embeddings import load_embedding
from webui.engine.models.loading import inspect_checkpoint
from webui.engine.models.prompt_tokens import Embedding
from webui.engine.models.store import ModelStore
from webui.engine.models.text_encoders import load_clip_tokenizer
from webui.engine.pipelines import PipelineContext, ProgressEvent, generate
from webui.engine.pipelines.txt2img import hires_size
from webui.engine.request import GenerationRequest
from webui.engine.sampling.registry import SAMPLERS, SCHEDULES
from webui.errors import ModelLoadError, RequestError, WebUIError
from webui.jobs import Job, JobQueue
from webui.outputs import infotext_to_fields, parse_infotext, read_infotext
from webui.paths import ModelLibrary
from webui.plugins import ControlsSpec, TabSpec, install
from webui.plugins.manager import ExtensionManager
from webui.ui.services import JobStatus, SettingSpec

log = logging.getLogger(__name__)
AUTOMATIC_VAE = "Automatic"
REQUEST_FIELDS = {f.name for f in fields(GenerationRequest)}
DEMO_STEM = "webui-demo"  # the built-in demo model: models/checkpoints/webui-demo.safetensors
DEMO_PRESET = "demo"  # presets/demo.yaml: the demo model's native size and sampling


def is_demo_checkpoint(name: str) -> bool:
    return Path(name).stem.startswith(DEMO_STEM)


class WebUIService:
    def __init__(
        self,
        options: LaunchOptions,
        library: ModelLibrary,
        store: ModelStore,
        settings: SettingsStore,
        presets: dict[str, dict[str, Any]],
        extensions: ExtensionManager | None = None,
        *,
        device: torch.device | None = None,
        depth: DepthEstimatorStore | None = None,
    ) -> None:
        self.options = options
        self.device = device or torch.device("cpu")
        self.manager = extensions
        self.library = library
        self.store = store
        self.settings_store = settings
        self._presets = presets
        # The refiner (SDXL's second model) is held beside the main model only while requests use one.
        self.refiner_store = ModelStore()
        self.depth = depth  # the depth estimator (depth tab, ControlNet's depth preprocessor); None: none
        self.jobs = JobQueue(self._run, max_queued=options.queue_size, max_per_owner=options.queue_per_user)
        self._embeddings: dict[Path, tuple[float, Embedding | None]] = {}  # path -> (mtime, embedding)
        self._chosen_checkpoint: str | None = None  # the default chosen over the API, until the app restarts

    # --- models ----------------------------------------------------------------------------------

    def checkpoints(self) -> list[str]:
        return self.library.names("checkpoints")

    def vaes(self) -> list[str]:
        return [AUTOMATIC_VAE, *self.library.names("vae")]

    def refresh_models(self) -> None:
        self.library.refresh()

    def loras(self) -> list[str]:
        return self.library.names("loras")

    def embeddings(self) -> list[str]:
        """Names usable in prompts: the embedding files' names without extension."""
        return [e.name for e in self._load_embeddings()]

    def _load_embeddings(self) -> tuple[Embedding, ...]:
        """The embeddings folder's files, each read once (again when it changes)."""
        found = []
        for name in self.library.names("embeddings"):
            path = self.library.path("embeddings", name, "embedding")
            mtime = path.stat().st_mtime
            cached = self._embeddings.get(path)
            if cached is None or cached[0] != mtime:
                try:
                    embedding = load_embedding(path)
                except ModelLoadError as exc:  # not an embedding: reported, and the others still work
                    log.warning("%s", exc)
                    embedding = None
                cached = self._embeddings[path] = (mtime, embedding)
            if cached[1] is not None:
                found.append(cached[1])
        return tuple(found)

    def default_checkpoint(self) -> str | None:
        """The checkpoint chosen as the default (A1111's `sd_model_checkpoint` option) while it is listed; else
        the first of the user's own checkpoints; the built-in demo model only when there is no other."""
        names = self.checkpoints()
        if self._chosen_checkpoint in names:
            return self._chosen_checkpoint
        own = [n for n in names if not is_demo_checkpoint(n)]
        return (own or names or [None])[0]

    def choose_default_checkpoint(self, name: str, field: str = "sd_model_checkpoint") -> str:
        """Make a listed checkpoint the default (UnknownName naming `field` otherwise); returns its listed name."""
        path = self.library.path("checkpoints", name, field)
        self._chosen_checkpoint = next(n for n in self.checkpoints() if self.library.path("checkpoints", n) == path)
        return self._chosen_checkpoint

    def initial_values(self) -> dict[str, Any]:
        """Field values the generation tabs start from, over the request's defaults: the `demo` preset when
        the default checkpoint is the demo model (made for 128x128, not the defaults' 512x512), else none."""
        checkpoint = self.default_checkpoint()
        return dict(self._presets.get(DEMO_PRESET, {})) if checkpoint and is_demo_checkpoint(checkpoint) else {}

    def depth_support(self, checkpoint: str | None) -> str:
        """How the depth tab will work with `checkpoint` (Markdown): its own depth input, or a depth
        ControlNet, or what is missing."""
        if not checkpoint:
            return "Choose a checkpoint."
        try:
            path = self.library.path("checkpoints", checkpoint, "checkpoint")
            spec = inspect_checkpoint(path) if path.suffix.lower() in (".safetensors", ".sft") else None
        except WebUIError as exc:
            return f"Cannot read **{checkpoint}**: {exc}"
        estimators = self.library.names("depth")
        if estimators:
            estimator = f"the depth estimator {estimators[0]}"
        elif self.settings_store.current.depth_download:
            estimator = "the depth estimator Intel/dpt-hybrid-midas, downloaded on first use (needs internet)"
        else:
            estimator = "no depth estimator: upload a depth map, or put a DPT model folder in models/depth"
        if spec is None:
            return (f"**{checkpoint}** is not a .safetensors file, so what it is shows when you generate. Depth "
                    f"comes from your depth map, or from the image by {estimator}.")
        if spec.variant == "depth":
            return (f"**{checkpoint}** is an SD 2 depth model: it follows your depth map (white = near), or the "
                    f"image's depth estimated by {estimator}.")
        controlnets = [n for n in self.library.names("controlnet") if "depth" in n.lower()]
        if controlnets:
            return (f"**{checkpoint}** ({spec.label}) is not a depth model: the depth guides it through a depth "
                    f"ControlNet from models/controlnet (the first made for {spec.label} of: {', '.join(controlnets)}). "
                    f"Depth comes from your map, or from the image by {estimator}.")
        return (f"**{checkpoint}** ({spec.label}) is not a depth model, and models/controlnet has no depth ControlNet. "
                "Choose an SD 2 depth checkpoint (e.g. 512-depth-ema), or put a depth ControlNet for "
                f"{spec.label} in models/controlnet (e.g. control_v11f1p_sd15_depth).")

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

    def submit(self, owner: str, checkpoint: str | None, vae: str | None, values: dict[str, Any],
               save: bool | None = None) -> str:
        """Validate and queue a generation; returns the job id. `save`: write the images to the outputs
        folder (None: as Settings say). Raises RequestError naming the field, or QueueFull."""
        settings = self.settings_store.current
        defaults = {"sampler_name": settings.default_sampler, "scheduler": settings.default_scheduler}
        request = GenerationRequest.from_dict({**defaults, **values})  # validation happens here
        if self.manager is not None:
            self.manager.check_request(request)  # extensions' parameters (RequestError naming the field)
        if not checkpoint:
            where = self.library.models_dir / "checkpoints"
            raise RequestError("checkpoint", checkpoint, f"a checkpoint; none is installed yet: put one in {where}")
        checkpoint_path = self.library.path("checkpoints", checkpoint, "checkpoint")
        vae_path = None if not vae or vae == AUTOMATIC_VAE else self.library.path("vae", vae, "vae")
        refiner_path = None
        if request.refiner_checkpoint:
            refiner_path = self.library.path("checkpoints", request.refiner_checkpoint, "refiner_checkpoint")
        self._check_pixel_budget(request)
        job = Job(owner, (request, checkpoint_path, vae_path, refiner_path, save))
        self.jobs.submit(job)
        return job.id

    def _check_pixel_budget(self, request: GenerationRequest) -> None:
        """Refuse, before queueing, a job whose batches need more pixels than the app allows at once."""
        budget = self.options.max_pixels
        sizes = [("width", request.width, request.height)]
        if request.enable_hr:
            sizes.append(("hr_scale", *hires_size(request)))
        for name, width, height in sizes:
            pixels = width * height * request.batch_size
            if pixels > budget:
                value = request.hr_scale if name == "hr_scale" else request.width
                raise RequestError(name, value, f"a size within the pixel budget: width x height x batch size at most "
                                   f"{budget:,} (this job: {width}x{height} x {request.batch_size} = {pixels:,})")

    def wait(self, owner: str, job_id: str, timeout: float | None = None) -> JobStatus:
        """The job's status once it has finished (or when `timeout` seconds have passed)."""
        self.jobs.get(owner, job_id).ended.wait(timeout)
        return self.status(owner, job_id)

    def owner_jobs(self, owner: str) -> list[JobStatus]:
        """The owner's known jobs, oldest first."""
        return [self.status(owner, job.id) for job in self.jobs.jobs_of(owner)]

    def status(self, owner: str, job_id: str) -> JobStatus:
        job = self.jobs.get(owner, job_id)
        return JobStatus(
            id=job.id, state=job.state, queue_position=self.jobs.position(job), step=job.step,
            total_steps=job.total_steps, batch_index=job.batch_index, batch_count=job.batch_count, phase=job.phase,
            preview=list(job.preview), images=list(job.images), infotexts=list(job.infotexts), seeds=list(job.seeds),
            paths=list(job.paths), error=job.error, error_kind=job.error_kind, error_field=job.error_field,
            notices=list(job.notices), elapsed=time.monotonic() - job.started_at if job.started_at else 0.0,
        )

    def interrupt(self, owner: str, job_id: str) -> None:
        self.jobs.cancel(owner, job_id)

    def skip(self, owner: str, job_id: str) -> None:
        self.jobs.get(owner, job_id).cancel.skip()

    def memory_policy(self) -> MemoryPolicy:
        """The memory policy from Settings, with the launch flags' values over them."""
        settings = self.settings_store.current
        values = {name: getattr(settings, name) for name in MEMORY_FLAGS} | dict(self.options.memory)
        precision = self.options.precision if self.options.precision != "auto" else settings.precision
        dtypes = choose_dtypes(self.device, precision, values.pop("unet_precision"), values.pop("text_encoder_precision"),
                               values.pop("vae_precision"))
        return policy_from_settings(self.device, dtypes, **values)

    def _run(self, job: Job) -> None:
        request, checkpoint_path, vae_path, refiner_path, save = job.payload
        job.phase = "loading model"
        policy = self.memory_policy()
        bundle = self.store.load(checkpoint_path, vae_path=vae_path, policy=policy)
        if refiner_path is not None:
            refiner = self.refiner_store.load(refiner_path, policy=policy)
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

        save = settings.save_images if save is None else save
        output_dir = self.options.outputs_dir / f"{request.mode}-images" if save else None
        hooks = self.manager.hooks_for_job() if self.manager is not None else None
        ctx = PipelineContext(bundle, model_name=checkpoint_path.stem, on_progress=on_progress, cancel=job.cancel,
                              output_dir=output_dir, refiner=refiner, embeddings=self._load_embeddings(), memory=policy,
                              depth_estimator=self.depth.estimate if self.depth is not None else None,
                              **({"hooks": hooks} if hooks is not None else {}))
        result = generate(request, ctx)
        job.images, job.infotexts, job.seeds = result.images, result.infotexts, result.seeds
        job.paths = [str(p) for p in result.paths]
        job.notices = list(result.notices)
        job.state = "interrupted" if result.interrupted else "done"

    # --- PNG info --------------------------------------------------------------------------------

    def read_infotext(self, image: Image.Image) -> tuple[str | None, dict[str, Any]]:
        image.load()  # PNG text chunks stored after the image data are read only with the pixels
        text = read_infotext(image)
        if text is None:
            return None, {}
        params = parse_infotext(text)
        values = infotext_to_fields(params)
        if values.get("enable_hr") and "denoising_strength" in values:
            values["hr_denoising_strength"] = values.pop("denoising_strength")
        if self.manager is not None:
            found = self.manager.call("read_infotext", {"params": params.a1111_params()})
            extension_values = {record.name: value for record, value in found if isinstance(value, dict)}
            if extension_values:
                values["extensions"] = extension_values
        return text, {k: v for k, v in values.items() if k in REQUEST_FIELDS}

    # --- settings and extensions -----------------------------------------------------------------

    def setting_specs(self) -> list[SettingSpec]:
        return list(SETTING_SPECS)

    def settings(self) -> dict[str, Any]:
        return {spec.name: getattr(self.settings_store.current, spec.name) for spec in SETTING_SPECS}

    def save_settings(self, values: dict[str, Any]) -> list[str]:
        return self.settings_store.save(values)

    # --- extensions ------------------------------------------------------------------------------

    def extensions(self) -> list[dict[str, Any]]:
        return self.manager.rows() if self.manager is not None else []

    def extension_access(self) -> bool:
        return self.options.extension_access

    def _check_extension_access(self) -> None:
        # Checked on the server for every call, whatever the UI shows: installing is running code.
        if not self.options.extension_access:
            raise WebUIError("Installing, updating and removing extensions is disabled because this app is exposed "
                             "(--listen or --share). Restart with --enable-insecure-extension-access to allow it.")

    def _manager(self) -> ExtensionManager:
        if self.manager is None:
            raise WebUIError("extensions are not loaded in this app")
        return self.manager

    def set_extension_enabled(self, name: str, enabled: bool) -> str:
        self._check_extension_access()  # enabling runs an installed extension's code at the next start
        return self._manager().set_enabled(name, enabled)

    def install_extension(self, url: str) -> str:
        self._check_extension_access()
        manifest = install.install_extension(url, self.options.extensions_dir)
        note = f"Installed {manifest.name} {manifest.version}. Restart the app to load it."
        if manifest.requirements:
            note += f" It asks for Python packages: {', '.join(manifest.requirements)} (install them below)."
        return note

    def extension_requirements(self, name: str) -> list[str]:
        return install.requirements_plan(install.read_manifest(self._installed_folder(name)))

    def install_extension_requirements(self, name: str, confirmed: bool) -> str:
        self._check_extension_access()
        manifest = install.read_manifest(self._installed_folder(name))
        installed = install.install_requirements(manifest, confirmed=confirmed)
        return f"Installed for {name}: {', '.join(installed) or 'nothing'}. Restart the app to use them."

    def check_extension_updates(self) -> list[dict[str, Any]]:
        self._check_extension_access()
        rows = []
        for record in self._manager().records:
            if record.source != "installed":
                continue
            info = install.check_for_update(record.folder)
            rows.append({"name": record.name, "behind": info.behind, "error": info.error})
        return rows

    def update_extension(self, name: str) -> str:
        self._check_extension_access()
        manifest = install.update_extension(self._installed_folder(name))
        return f"Updated {manifest.name} to {manifest.version}. Restart the app to load the new version."

    def uninstall_extension(self, name: str) -> str:
        self._check_extension_access()
        install.uninstall_extension(name, self.options.extensions_dir)
        return f"Removed {name}. Restart the app to unload it."

    def extension_tabs(self) -> list[tuple[str, Any]]:
        if self.manager is None:
            return []
        found = self.manager.call("ui_tabs", {}, accept=lambda specs: isinstance(specs, (list, tuple)) and all(
            isinstance(spec, TabSpec) for spec in specs), expected="a list of TabSpec")
        return [(record.name, spec) for record, specs in found for spec in specs]

    def extension_controls(self, tab: str) -> list[tuple[str, Any]]:
        if self.manager is None:
            return []
        found = self.manager.call("ui_controls", {"tab": tab}, accept=lambda spec: isinstance(spec, ControlsSpec),
                                  expected="a ControlsSpec")
        return [(record.name, spec) for record, spec in found]

    def _installed_folder(self, name: str) -> Path:
        """An installed (community) extension's folder, found by name in the loaded list."""
        record = self._manager().record(name)
        if record.source != "installed":
            raise RequestError("name", name, "an installed community extension (built-ins cannot be changed)")
        return record.folder
