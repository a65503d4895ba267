"""The job queue: one worker runs generations in order; each job owns its progress, results and cancel token."""

from __future__ import annotations

import collections
import logging
import threading
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from webui.engine.pipelines.context import CancelToken
from webui.errors import WebUIError

log = logging.getLogger(__name__)


class QueueFull(WebUIError):
    pass


class JobNotFound(WebUIError):
    pass


@dataclass
class Job:
    owner: str
    payload: Any  # what the runner needs (the request, the model names)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: str = "queued"  # queued, running, done, failed, interrupted
    phase: str = ""
    step: int = 0
    total_steps: int = 0
    batch_index: int = 0
    batch_count: int = 1
    preview: list[Image.Image] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    error: str | None = None
    notices: list[str] = field(default_factory=list)  # e.g. an extension that failed during the job
    cancel: CancelToken = field(default_factory=CancelToken)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "interrupted")


class JobQueue:
    """FIFO queue with one worker thread. `run(job)` does the work and fills the job's fields."""

    def __init__(self, run: Callable[[Job], None], max_queued: int = 64, keep_finished: int = 200) -> None:
        self._run = run
        self._max_queued = max_queued
        self._queue: collections.deque[Job] = collections.deque()
        self._jobs: dict[str, Job] = {}
        self._finished: collections.deque[str] = collections.deque()
        self._keep_finished = keep_finished
        self._cond = threading.Condition()
        self._stopped = False
        self._worker = threading.Thread(target=self._work, name="generation-worker", daemon=True)
        self._worker.start()

    def submit(self, job: Job) -> Job:
        with self._cond:
            if len(self._queue) >= self._max_queued:
                raise QueueFull(f"The queue is full ({self._max_queued} jobs waiting); try again in a moment.")
            self._queue.append(job)
            self._jobs[job.id] = job
            self._cond.notify()
        return job

    def get(self, owner: str, job_id: str) -> Job:
        """A job by id, only for its owner (others get "not found", not a hint that it exists)."""
        job = self._jobs.get(job_id)
        if job is None or job.owner != owner:
            raise JobNotFound("No such job (it may have finished long ago).")
        return job

    def position(self, job: Job) -> int:
        with self._cond:
            try:
                return list(self._queue).index(job) + 1
            except ValueError:
                return 0

    def cancel(self, owner: str, job_id: str) -> None:
        """Interrupt a running job, or take a queued one off the queue."""
        job = self.get(owner, job_id)
        with self._cond:
            if job in self._queue:
                self._queue.remove(job)
                job.state = "interrupted"
                self._remember(job)
                return
        job.cancel.interrupt()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _remember(self, job: Job) -> None:
        self._finished.append(job.id)
        while len(self._finished) > self._keep_finished:
            self._jobs.pop(self._finished.popleft(), None)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                job = self._queue.popleft()
                job.state = "running"
            try:
                self._run(job)
                if job.state == "running":
                    job.state = "interrupted" if job.cancel.interrupted else "done"
            except WebUIError as exc:
                job.state, job.error = "failed", str(exc)
            except Exception as exc:  # noqa: BLE001 - the worker must survive any job
                log.error("job %s failed:\n%s", job.id, traceback.format_exc())
                job.state, job.error = "failed", f"Internal error: {type(exc).__name__}: {exc}"
            finally:
                job.preview = []
                with self._cond:
                    self._remember(job)
