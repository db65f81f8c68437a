"""A queue that runs long jobs (engine builds) one at a time on a worker thread, with progress and cancel.

One worker means two builds never write the same files at once; the WebUI stays responsive because the
caller only submits and polls.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import BuildCancelled, TrtError

JobFn = Callable[["Job"], Any]


@dataclass
class Job:
    """A submitted job: its state is read by the tab and the API while the worker updates it."""

    id: str
    description: str
    fn: JobFn = field(repr=False)
    state: str = "queued"
    """queued, running, done, failed or cancelled."""
    stage: str = ""
    progress: float = 0.0
    message: str = ""
    result: Any = None
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    submitted: float = field(default_factory=time.time)
    finished: float | None = None

    def report(self, stage: str, fraction: float) -> None:
        """Progress callback for the job's function."""
        self.stage = stage
        self.progress = max(self.progress, min(1.0, fraction))

    @property
    def finished_ok(self) -> bool:
        return self.state == "done"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "description": self.description, "state": self.state, "stage": self.stage,
                "progress": round(self.progress, 3), "message": self.message}


class JobQueue:
    """Runs submitted jobs in order on one daemon thread."""

    def __init__(self, keep: int = 50) -> None:
        self._jobs: dict[str, Job] = {}
        self._pending: queue.Queue[Job] = queue.Queue()
        self._keep = keep
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, description: str, fn: JobFn) -> Job:
        job = Job(uuid.uuid4().hex[:12], description, fn)
        with self._lock:
            self._jobs[job.id] = job
            self._forget_old()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="trt-build-queue", daemon=True)
                self._thread.start()
        self._pending.put(job)
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        return list(self._jobs.values())

    def busy(self) -> bool:
        return any(j.state in ("queued", "running") for j in self._jobs.values())

    def cancel(self, job_id: str) -> bool:
        job = self._jobs.get(job_id)
        if job is None or job.state not in ("queued", "running"):
            return False
        job.cancel.set()
        return True

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job ends (tests and scripts); the UI polls instead."""
        deadline = None if timeout is None else time.time() + timeout
        job = self._jobs[job_id]
        while job.state in ("queued", "running"):
            if deadline is not None and time.time() > deadline:
                raise TimeoutError(f"job {job_id} still {job.state}")
            time.sleep(0.02)
        return job

    def _work(self) -> None:
        while True:
            job = self._pending.get()
            if job.cancel.is_set():
                self._finish(job, "cancelled", "cancelled before it started")
                continue
            job.state = "running"
            try:
                job.result = job.fn(job)
                self._finish(job, "done", "finished")
            except BuildCancelled as e:
                self._finish(job, "cancelled", str(e))
            except TrtError as e:
                if e.__cause__ is not None:  # an unexpected error under ours: keep its traceback in the console
                    traceback.print_exception(e)
                self._finish(job, "failed", str(e))
            except Exception as e:  # a bug or a library error: keep the worker alive and tell the user
                traceback.print_exc()
                self._finish(job, "failed", f"{type(e).__name__}: {e}")

    def _finish(self, job: Job, state: str, message: str) -> None:
        job.state, job.message, job.finished = state, message, time.time()
        if state == "done":
            job.progress = 1.0

    def _forget_old(self) -> None:
        ended = [j for j in self._jobs.values() if j.finished is not None]
        for job in sorted(ended, key=lambda j: j.finished or 0)[:-self._keep or None]:
            del self._jobs[job.id]
