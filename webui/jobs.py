"""The job queue: one worker runs generations, owners taking turns; each job owns its progress, results and
cancel token, and only its owner may see or cancel it."""

from __future__ import annotations

import collections
import logging
import threading
import time
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
    error_kind: str | None = None  # the failure's type: "RequestError", "OutOfMemory", "internal", ...
    error_field: str | None = None  # the request field a RequestError names
    notices: list[str] = field(default_factory=list)  # e.g. an extension that failed during the job
    cancel: CancelToken = field(default_factory=CancelToken)
    ended: threading.Event = field(default_factory=threading.Event, repr=False)  # set once the job is finished
    started_at: float | None = None  # time.monotonic() when it started running

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "interrupted")


class JobQueue:
    """A bounded queue with one worker thread, fair between owners: owners take turns (round robin, each
    owner's jobs in the order submitted), and each may have at most `max_per_owner` jobs waiting.
    `run(job)` does the work and fills the job's fields."""

    def __init__(self, run: Callable[[Job], None], max_queued: int = 64, max_per_owner: int = 16,
                 keep_finished: int = 200) -> None:
        self._run = run
        self._max_queued = max_queued
        self._max_per_owner = max_per_owner
        # Owner -> that owner's waiting jobs; the dict's order is the order owners are served next.
        self._waiting: dict[str, collections.deque[Job]] = {}
        self._jobs: dict[str, Job] = {}
        self._finished: collections.deque[str] = collections.deque()
        self._keep_finished = keep_finished
        self._cond = threading.Condition()
        self._stopped = False
        self.running: Job | None = None
        self._worker = threading.Thread(target=self._work, name="generation-worker", daemon=True)
        self._worker.start()

    def submit(self, job: Job) -> Job:
        with self._cond:
            waiting = sum(len(q) for q in self._waiting.values())
            if waiting >= self._max_queued:
                raise QueueFull(f"The queue is full ({self._max_queued} jobs waiting); try again in a moment.")
            mine = self._waiting.get(job.owner)
            if mine is not None and len(mine) >= self._max_per_owner:
                raise QueueFull(f"You already have {self._max_per_owner} jobs waiting (the most one user may queue); "
                                "wait for one to start, or cancel one.")
            self._waiting.setdefault(job.owner, collections.deque()).append(job)
            self._jobs[job.id] = job
            self._cond.notify()
        return job

    def get(self, owner: str, job_id: str) -> Job:
        """A job by id, only for its owner (others get "not found", not a hint that it exists)."""
        job = self._jobs.get(job_id)
        if job is None or job.owner != owner:
            raise JobNotFound("No such job (it may have finished long ago).")
        return job

    def jobs_of(self, owner: str) -> list[Job]:
        """The owner's jobs that are still known, oldest first."""
        with self._cond:
            return [job for job in self._jobs.values() if job.owner == owner]

    def order(self) -> list[Job]:
        """The waiting jobs in the order they will run if nobody submits more: owners' first jobs in turn,
        then their second jobs, ..."""
        with self._cond:
            queues = [list(q) for q in self._waiting.values()]
        return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]

    def position(self, job: Job) -> int:
        """1 for the next job to run, 2 for the one after, ...; 0 when the job is not waiting."""
        order = self.order()
        return order.index(job) + 1 if job in order else 0

    def cancel(self, owner: str, job_id: str) -> None:
        """Interrupt a running job, or take a waiting one off the queue (it never runs)."""
        job = self.get(owner, job_id)
        with self._cond:
            mine = self._waiting.get(owner)
            if mine is not None and job in mine:
                mine.remove(job)
                if not mine:
                    del self._waiting[owner]
                job.state = "interrupted"
                self._remember(job)
                return
        job.cancel.interrupt()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _remember(self, job: Job) -> None:
        job.ended.set()
        self._finished.append(job.id)
        while len(self._finished) > self._keep_finished:
            self._jobs.pop(self._finished.popleft(), None)

    def _next(self) -> Job:
        """The first waiting owner's oldest job; that owner then goes to the back of the turn order."""
        owner, mine = next(iter(self._waiting.items()))
        job = mine.popleft()
        del self._waiting[owner]
        if mine:
            self._waiting[owner] = mine
        return job

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                job = self._next()
                job.state, job.started_at = "running", time.monotonic()
                self.running = job
            try:
                self._run(job)
                if job.state == "running":
                    job.state = "interrupted" if job.cancel.interrupted else "done"
            except WebUIError as exc:
                job.state, job.error, job.error_kind = "failed", str(exc), type(exc).__name__
                job.error_field = getattr(exc, "field", None)
            except Exception as exc:  # noqa: BLE001 - the worker must survive any job
                log.error("job %s failed:\n%s", job.id, traceback.format_exc())
                job.state, job.error = "failed", f"Internal error: {type(exc).__name__}: {exc}"
                job.error_kind = "internal"
            finally:
                job.preview = []
                with self._cond:
                    self.running = None
                    self._remember(job)
