"""The extension manager: loads extensions, and calls their hooks one implementation at a time so that
a failing extension is reported and, when it keeps failing, disabled, while everything else goes on.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pluggy

from webui.engine.patching import PatchError, WeightPatch, model_roots, resolve_parameter
from webui.engine.pipelines.hooks import PipelineHooks
from webui.engine.prompts import ParsedPrompt
from webui.engine.request import GenerationRequest
from webui.errors import RequestError
from webui.plugins import hookspecs
from webui.plugins.api import ExtensionContext, StepInfo
from webui.plugins.discovery import Candidate, find_candidates, import_extension
from webui.plugins.manifest import ExtensionError, Manifest, check_api_version, read_manifest

log = logging.getLogger("webui.extensions")
HOOK_NAMES = frozenset(n for n in dir(hookspecs) if isinstance(getattr(hookspecs, n), Callable)
                       and hasattr(getattr(hookspecs, n), f"{hookspecs.PROJECT}_spec"))
MAX_FAILURES = 3  # consecutive failing calls after which an extension is disabled until restart


@dataclass
class ExtensionRecord:
    """One extension as the Extensions tab shows it."""

    name: str
    folder: Path
    source: str  # "builtin", "installed" or "package"
    version: str = ""
    description: str = ""
    status: str = "loaded"  # loaded, disabled (by the user), failed (at load), refused, stopped (kept failing)
    error: str | None = None
    failures: int = 0  # consecutive failing calls
    module: Any = field(default=None, repr=False)
    context: ExtensionContext | None = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return self.status == "loaded"


class ExtensionState:
    """Which extensions the user disabled, persisted as JSON: {"disabled": [names]}."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.disabled: set[str] = set()
        if path is not None and path.is_file():
            try:
                self.disabled = set(json.loads(path.read_text(encoding="utf-8")).get("disabled", []))
            except (OSError, ValueError, AttributeError) as exc:
                log.warning("ignoring unreadable extension state %s: %s", path, exc)

    def set_enabled(self, name: str, enabled: bool) -> None:
        (self.disabled.discard if enabled else self.disabled.add)(name)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text(json.dumps({"disabled": sorted(self.disabled)}, indent=1), encoding="utf-8")
            temporary.replace(self.path)


class ExtensionManager:
    def __init__(self, *, builtin_dir: Path | None, extensions_dir: Path | None, data_dir: Path, models_dir: Path,
                 state: ExtensionState | None = None, services: dict[str, Callable[..., Any]] | None = None) -> None:
        self.builtin_dir, self.extensions_dir = builtin_dir, extensions_dir
        self.data_dir, self.models_dir = data_dir, models_dir
        self.state = state or ExtensionState(None)
        self.services = services or {}
        self.records: list[ExtensionRecord] = []
        self.notices: list[str] = []  # app-wide messages (e.g. an extension stopped)
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)

    # --- loading ---------------------------------------------------------------------------------

    def load(self) -> None:
        """Discover, validate and register every extension; problems are recorded, never raised."""
        for candidate in find_candidates(self.builtin_dir, self.extensions_dir):
            record = self._load_one(candidate)
            self.records.append(record)
            if record.error:
                log.warning("extension %s: %s", record.name, record.error)
        self.call("startup", {})

    def _load_one(self, candidate: Candidate) -> ExtensionRecord:
        record = ExtensionRecord(candidate.folder.name, candidate.folder, candidate.source)
        if candidate.error:
            record.status, record.error = "failed", candidate.error
            return record
        try:
            manifest = read_manifest(candidate.folder)
        except ExtensionError as exc:
            record.status, record.error = "failed", str(exc)
            return record
        record.name, record.version, record.description = manifest.name, manifest.version, manifest.description
        try:
            check_api_version(manifest)
        except ExtensionError as exc:
            record.status, record.error = "refused", str(exc)
            return record
        if any(r.name == manifest.name for r in self.records):  # checked before its code is imported
            record.status, record.error = "refused", f"another extension is already named {manifest.name!r}"
            return record
        if manifest.name in self.state.disabled:
            record.status = "disabled"
            return record
        try:
            record.module = import_extension(candidate, manifest.name)
            self._check_hooks(record)
            self.pm.register(record.module, name=manifest.name)
        except Exception as exc:  # any error in an extension's own code: it must not stop the app
            record.status = "failed"
            record.error = f"could not be loaded: {type(exc).__name__}: {exc}"
            log.debug("extension %s failed to load:\n%s", manifest.name, traceback.format_exc())
            self._forget(record)
            return record
        record.context = self._context(manifest)
        return record

    def _check_hooks(self, record: ExtensionRecord) -> None:
        """Refuse unknown hook names and wrapper hooks before pluggy checks the signatures."""
        for attr in dir(record.module):
            options = self.pm.parse_hookimpl_opts(record.module, attr)
            if options is None:
                continue
            if attr not in HOOK_NAMES:
                raise ExtensionError(f"{attr!r} is not a hook of this extension API (hooks: {', '.join(sorted(HOOK_NAMES))})")
            if options.get("hookwrapper") or options.get("wrapper"):
                raise ExtensionError(f"{attr!r} is a hook wrapper; wrappers are not supported (use wrap_model)")

    def _forget(self, record: ExtensionRecord) -> None:
        if record.module is not None and self.pm.is_registered(record.module):
            self.pm.unregister(record.module)

    def _context(self, manifest: Manifest) -> ExtensionContext:
        assert manifest.folder is not None
        return ExtensionContext(name=manifest.name, folder=manifest.folder, data_dir=self.data_dir / manifest.name,
                                models_dir=self.models_dir, log=logging.getLogger(f"webui.extensions.{manifest.name}"),
                                services=dict(self.services))

    def record(self, name: str) -> ExtensionRecord:
        for record in self.records:
            if record.name == name:
                return record
        raise ExtensionError(f"no extension is named {name!r}", field="name")

    # --- calling ---------------------------------------------------------------------------------

    def implementations(self, hook: str) -> list[tuple[ExtensionRecord, Any]]:
        """(record, hook implementation) of every active extension implementing `hook`, in load order."""
        by_name = {self.pm.get_name(impl.plugin): impl for impl in getattr(self.pm.hook, hook).get_hookimpls()}
        return [(r, by_name[r.name]) for r in self.records if r.active and r.name in by_name]

    def call_one(self, record: ExtensionRecord, impl: Any, hook: str, given: dict[str, Any],
                 notices: list[str] | None, accept: Callable[[Any], bool] = lambda result: True,
                 expected: str = "") -> tuple[bool, Any]:
        """(ok, result) of one implementation, given the arguments it asks for from `given`. A raise, or a
        non-None result that `accept` refuses (it should be `expected`), is reported and gives (False, None)."""
        try:
            result = impl.function(**{name: given[name] for name in impl.argnames})
        except RequestError:  # the user's input refused, with a message naming the field: not a bug
            raise
        except Exception as exc:  # an extension's bug: attribute it, report it, go on
            self.report_failure(record, hook, exc, notices)
            return False, None
        if result is not None and not accept(result):
            self.report_failure(record, hook, TypeError(f"returned {type(result).__name__}, expected {expected}"),
                                notices)
            return False, None
        record.failures = 0  # a success ends a run of failures
        return True, result

    def call(self, hook: str, arguments: dict[str, Any], notices: list[str] | None = None,
             context: Callable[[ExtensionRecord], ExtensionContext | None] = lambda r: r.context,
             accept: Callable[[Any], bool] = lambda result: True, expected: str = "",
             ) -> list[tuple[ExtensionRecord, Any]]:
        """Call every active extension's `hook` in load order; [(record, result)] for accepted non-None results.

        Each gets `arguments` plus its own `context`; failures are handled by `call_one`, and the other
        implementations still run.
        """
        results = []
        for record, impl in self.implementations(hook):
            ok, result = self.call_one(record, impl, hook, {**arguments, "context": context(record)}, notices,
                                       accept, expected)
            if ok and result is not None:
                results.append((record, result))
        return results

    def report_failure(self, record: ExtensionRecord, hook: str, exc: Exception, notices: list[str] | None) -> None:
        record.failures += 1
        message = f"Extension '{record.name}' failed in {hook}: {type(exc).__name__}: {exc}"
        log.error("%s", message, exc_info=exc)  # exc's own traceback (there is none for a wrong return type)
        record.error = message
        if record.failures >= MAX_FAILURES:
            record.status = "stopped"
            message += f" (it failed {record.failures} times in a row and is disabled until the app restarts)"
            self.notices.append(message)
        if notices is not None:
            notices.append(message)

    def hooks_for_job(self) -> ExtensionHooks:
        return ExtensionHooks(self)

    def check_request(self, request: GenerationRequest) -> None:
        """Let every extension check its parameters before the request is queued: a `RequestError`
        refuses the request; any other error is the extension's failure, and the request goes on."""
        self.call("check_request", {"request": request})

    # --- enable / disable ------------------------------------------------------------------------

    def set_enabled(self, name: str, enabled: bool) -> str:
        """Persist the choice; it takes effect when the app restarts. Returns a message for the user."""
        record = self.record(name)
        self.state.set_enabled(name, enabled)
        return f"{record.name} will be {'enabled' if enabled else 'disabled'} when the app restarts."

    def rows(self) -> list[dict[str, Any]]:
        return [{"name": r.name, "version": r.version, "source": r.source,
                 "status": r.status + (" (disabled at next start)" if r.name in self.state.disabled and r.active else ""),
                 "error": r.error, "description": r.description} for r in self.records]


class ExtensionHooks(PipelineHooks):
    """The engine's extension points for one job, filled from the extensions' hooks."""

    def __init__(self, manager: ExtensionManager) -> None:
        super().__init__()
        self.manager = manager
        self._contexts: dict[str, ExtensionContext] = {}

    def context(self, record: ExtensionRecord) -> ExtensionContext | None:
        """The extension's context for this job: its `warn` adds to this job's notices."""
        if record.name not in self._contexts and record.context is not None:
            def warn(message: str, name: str = record.name) -> None:
                self.notices.append(f"{name}: {message}")
            self._contexts[record.name] = replace(record.context, warn=warn)
        return self._contexts.get(record.name)

    def _chain(self, hook: str, key: str, value: Any, accept: Callable[[Any], bool], expected: str,
               **other: Any) -> Any:
        """Pass `value` (argument `key`) through each extension in turn; None keeps it unchanged."""
        for record, impl in self.manager.implementations(hook):
            given = {key: value, **other, "context": self.context(record)}
            ok, result = self.manager.call_one(record, impl, hook, given, self.notices, accept, expected)
            if ok and result is not None:
                value = result
        return value

    def rewrite_request(self, request: GenerationRequest, bundle) -> GenerationRequest:
        return self._chain("rewrite_request", "request", request, lambda r: isinstance(r, GenerationRequest),
                           "a GenerationRequest or None", bundle=bundle)

    def parse_prompt(self, text: str, steps: int, is_negative: bool) -> ParsedPrompt:
        # The first extension that answers wins; a wrong answer counts as a failure and the next is asked.
        for record, impl in self.manager.implementations("parse_prompt"):
            given = {"text": text, "steps": steps, "is_negative": is_negative, "context": self.context(record)}
            ok, result = self.manager.call_one(record, impl, "parse_prompt", given, self.notices,
                                               lambda r: isinstance(r, ParsedPrompt) and bool(r.parts),
                                               "a ParsedPrompt with parts")
            if ok and result is not None:
                return result
        return ParsedPrompt.literal(text, steps)

    def weight_patches(self, request, bundle) -> list:
        roots = model_roots(bundle)

        def valid(patches: Any) -> bool:  # a bad patch leaves out that extension's patches, not the job
            if not isinstance(patches, (list, tuple)) or not all(isinstance(p, WeightPatch) for p in patches):
                return False
            for patch in patches:
                resolve_parameter(roots, patch.target, patch.source)  # raises PatchError naming it
            return True

        results = []
        for record, patches in self.manager.call("weight_patches", {"request": request, "bundle": bundle},
                                                 self.notices, self.context):
            try:
                if valid(patches):
                    results += list(patches)
                    continue
                problem: Exception = TypeError("expected a list of WeightPatch")
            except PatchError as exc:
                problem = exc
            self.manager.report_failure(record, "weight_patches", problem, self.notices)
        return results

    def wrap_model(self, model, request, bundle, sampling):
        return self._chain("wrap_model", "model", model, callable, "a callable", request=request, bundle=bundle,
                           sampling=sampling)

    def on_step(self, event) -> None:
        if self.manager.implementations("on_step"):
            info = StepInfo(event.step, event.total_steps, event.batch_index, event.phase, event.latents)
            self.manager.call("on_step", {"step": info}, self.notices, self.context)

    def postprocess_image(self, image, request, index):
        from PIL import Image

        return self._chain("postprocess_image", "image", image, lambda r: isinstance(r, Image.Image), "a PIL image",
                           request=request, index=index)

    def infotext_fields(self, request) -> dict[str, str]:
        fields: dict[str, str] = {}
        for _, result in self.manager.call("infotext_fields", {"request": request}, self.notices, self.context,
                                           accept=lambda r: isinstance(r, dict), expected="a dict"):
            fields.update({str(k): str(v) for k, v in result.items()})
        return fields

