"""The job queue: owners take turns, caps, positions, cancelling, and a worker that survives any job."""

import threading
import time

import pytest

from webui.errors import WebUIError
from webui.jobs import Job, JobNotFound, JobQueue, QueueFull


class Gate:
    """A runner that holds the first job until released, recording the order jobs run in."""

    def __init__(self):
        self.release = threading.Event()
        self.started = threading.Event()
        self.ran: list[str] = []

    def __call__(self, job):
        self.ran.append(job.payload)
        self.started.set()
        if job.payload == "hold":
            self.release.wait(10)
        if job.payload == "boom":
            raise RuntimeError("kaput")
        if job.payload == "refuse":
            raise WebUIError("a clear message")


def wait_until(predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise TimeoutError


@pytest.fixture
def gate():
    return Gate()


def holding(gate, **options):
    queue = JobQueue(gate, **options)
    queue.submit(Job("x", "hold"))
    assert gate.started.wait(5)
    return queue


def test_owners_take_turns_in_the_order_they_arrived(gate):
    queue = holding(gate)
    jobs = [queue.submit(Job(owner, f"{owner}{i}")) for owner, i in
            (("ann", 1), ("ann", 2), ("ann", 3), ("bob", 1), ("cat", 1), ("bob", 2))]
    assert [j.payload for j in queue.order()] == ["ann1", "bob1", "cat1", "ann2", "bob2", "ann3"]
    assert [queue.position(j) for j in jobs] == [1, 4, 6, 2, 3, 5]
    gate.release.set()
    wait_until(lambda: all(j.finished for j in jobs))
    assert gate.ran == ["hold", "ann1", "bob1", "cat1", "ann2", "bob2", "ann3"]
    assert queue.position(jobs[0]) == 0
    queue.stop()


def test_the_queue_and_each_owner_are_capped_with_a_clear_message(gate):
    queue = holding(gate, max_queued=4, max_per_owner=2)
    queue.submit(Job("ann", "a"))
    queue.submit(Job("ann", "b"))
    with pytest.raises(QueueFull, match="You already have 2 jobs waiting"):
        queue.submit(Job("ann", "c"))
    queue.submit(Job("bob", "d"))
    queue.submit(Job("cat", "e"))
    with pytest.raises(QueueFull, match=r"The queue is full \(4 jobs waiting\)"):
        queue.submit(Job("dan", "f"))
    gate.release.set()
    queue.stop()


def test_only_the_owner_sees_or_cancels_a_job_and_a_waiting_job_never_runs(gate):
    queue = holding(gate)
    mine = queue.submit(Job("ann", "mine"))
    with pytest.raises(JobNotFound):
        queue.get("bob", mine.id)
    with pytest.raises(JobNotFound):
        queue.cancel("bob", mine.id)
    queue.cancel("ann", mine.id)
    assert mine.state == "interrupted" and queue.order() == []
    after = queue.submit(Job("ann", "after"))
    gate.release.set()
    wait_until(lambda: after.finished)
    assert "mine" not in gate.ran and queue.jobs_of("ann") == [mine, after]
    queue.stop()


def test_a_running_job_is_interrupted_through_its_token(gate):
    queue = JobQueue(gate)
    job = queue.submit(Job("ann", "hold"))
    assert gate.started.wait(5)
    assert queue.running is job
    queue.cancel("ann", job.id)
    assert job.cancel.interrupted
    gate.release.set()
    wait_until(lambda: job.finished)
    assert job.state == "interrupted" and queue.running is None
    queue.stop()


def test_failures_are_recorded_and_the_worker_goes_on(gate):
    queue = JobQueue(gate)
    boom, refused, fine = (queue.submit(Job("ann", p)) for p in ("boom", "refuse", "fine"))
    wait_until(lambda: fine.finished)
    assert boom.state == "failed" and boom.error == "Internal error: RuntimeError: kaput"
    assert refused.state == "failed" and refused.error == "a clear message"
    assert fine.state == "done"
    queue.stop()
