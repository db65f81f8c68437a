"""The build queue: one job at a time, progress, cancel, failures that keep the worker alive."""

from __future__ import annotations

import threading

import pytest

from trt_lib.errors import BuildCancelled, BuildError
from trt_lib.jobs.job_queue import Job, JobQueue


def test_jobs_run_one_at_a_time_in_order_with_progress():
    running, order, peak = [], [], []
    lock = threading.Lock()

    def work(name):
        def fn(job: Job):
            with lock:
                running.append(name)
                peak.append(len(running))
            job.report("half", 0.5)
            order.append(name)
            with lock:
                running.remove(name)
            return name
        return fn

    q = JobQueue()
    jobs = [q.submit(f"job {i}", work(i)) for i in range(5)]
    done = [q.wait(j.id, timeout=10) for j in jobs]
    assert order == [0, 1, 2, 3, 4] and max(peak) == 1
    assert all(j.state == "done" and j.progress == 1.0 for j in done) and done[2].result == 2


@pytest.mark.catalogue("interruptions")
def test_cancel_a_running_and_a_queued_job():
    started, release = threading.Event(), threading.Event()

    def slow(job: Job):
        started.set()
        release.wait(5)
        if job.cancel.is_set():
            raise BuildCancelled("build cancelled; nothing was written")

    q = JobQueue()
    first, second = q.submit("slow", slow), q.submit("queued", lambda job: "never")
    started.wait(5)
    assert q.busy() and q.cancel(first.id) and q.cancel(second.id)
    release.set()
    assert q.wait(first.id, 5).state == "cancelled" and "nothing was written" in first.message
    assert q.wait(second.id, 5).state == "cancelled" and second.result is None
    assert not q.cancel(first.id) and not q.busy()


@pytest.mark.catalogue("interruptions")
def test_failures_are_reported_and_the_worker_goes_on():
    q = JobQueue()

    def boom(job):
        raise BuildError("parser: bad node")

    def bug(job):
        raise KeyError("x")

    a, b, c = q.submit("a", boom), q.submit("b", bug), q.submit("c", lambda job: 42)
    assert q.wait(a.id, 5).state == "failed" and a.message == "parser: bad node"
    assert q.wait(b.id, 5).state == "failed" and "KeyError" in b.message
    assert q.wait(c.id, 5).result == 42
