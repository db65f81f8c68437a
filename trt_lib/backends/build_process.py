"""A backend's build in a child process, so that a cancel stops it at once, wherever the build is.

TensorRT stops a build only when its progress monitor's ``step_complete`` returns False, between steps.
TensorRT for RTX 1.7.1 reports no step for most of a build: measured on a CPU for a tiny SD 1.x UNet at
512 px, one step ("Determining refit engines") took 10 of the build's 12.8 s, and a real UNet's build spends
minutes there. A child process is killed wherever it is; the partial files it was writing carry its process
id and are removed by the parent, so a cancel leaves nothing half-written.

Protocol: the parent writes one JSON request to the child's stdin; the child answers with lines on stdout
that start with :data:`MARK` (progress, then a report or an error); other output is passed on to the console.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import subprocess
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import errors
from ..errors import BuildCancelled, BuildError, TrtError
from ..store.engine_store import discard_partials
from .trt10 import Backend, BuildReport, Progress

if TYPE_CHECKING:
    from ..engines.runtime import EngineProfile

MARK = "\x1etrt-build "
"""Starts the child's protocol lines (TensorRT or Python may print other lines to stdout)."""

LIBRARY_ROOT = Path(__file__).resolve().parents[2]
"""The folder holding ``trt_lib``, put on the child's ``PYTHONPATH``."""


def build_in_child(backend: Backend, onnx_path: Path, engine_path: Path, profiles: Sequence[EngineProfile], *,
                   target: str, refit: bool, strip_weights: bool, progress: Progress, cancel: threading.Event,
                   cache_dir: Path | None) -> BuildReport:
    """Run :meth:`Backend.build_here` in a child process; kill it on a cancel (:class:`BuildCancelled`) or when
    ``progress`` raises (re-raised here), removing what it was writing."""
    request = {"backend": dataclasses.asdict(backend), "onnx_path": str(onnx_path), "engine_path": str(engine_path),
               "profiles": [{name: [list(s) for s in shapes] for name, shapes in p.items()} for p in profiles],
               "target": target, "refit": refit, "strip_weights": strip_weights,
               "cache_dir": str(cache_dir) if cache_dir else None}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(LIBRARY_ROOT), os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen([sys.executable, "-m", "trt_lib.backends.build_process"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, env=env, text=True, encoding="utf-8", errors="replace")
    messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
    threading.Thread(target=_read, args=(child, messages), name="trt-build-output", daemon=True).start()
    try:
        assert child.stdin is not None
        child.stdin.write(json.dumps(request))
        child.stdin.close()
        answer = _follow(messages, progress, cancel)
        child.wait()
    except BaseException:
        child.kill()
        child.wait()
        for folder in {engine_path.parent, *([Path(cache_dir)] if cache_dir else [])}:
            discard_partials(folder, child.pid)
        raise
    if answer is None:
        raise BuildError(f"{backend.label}'s build process ended without a result (exit code {child.returncode}; "
                         "out of memory?). Its messages are in the console.")
    if "error" in answer:
        error = getattr(errors, answer["error"], None)
        raise (error if isinstance(error, type) and issubclass(error, TrtError) else BuildError)(answer["message"])
    report = answer["report"]
    return BuildReport(**{**report, "compute_capabilities": tuple(report["compute_capabilities"]),
                          "phases": tuple((name, seconds) for name, seconds in report["phases"])})


def _read(child: subprocess.Popen, messages: queue.Queue) -> None:
    """Pass the child's protocol lines on to the parent; print the rest, as the build would have."""
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith(MARK):
            messages.put(json.loads(line[len(MARK):]))
        else:
            print(line, end="")
    messages.put(None)


def _follow(messages: queue.Queue, progress: Progress, cancel: threading.Event) -> dict[str, Any] | None:
    """Relay progress until the child answers (or its output ends: None); stop as soon as ``cancel`` is set."""
    while True:
        BuildCancelled.check(cancel)
        try:
            message = messages.get(timeout=0.1)
        except queue.Empty:
            continue
        if message is None or "progress" not in message:
            return message
        progress(*message["progress"])


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(MARK + json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    """The child: build what stdin asks for, answer on stdout."""
    request = json.loads(sys.stdin.read())
    try:
        report = Backend(**request["backend"]).build_here(
            Path(request["onnx_path"]), Path(request["engine_path"]),
            [{name: tuple(tuple(s) for s in shapes) for name, shapes in p.items()} for p in request["profiles"]],
            target=request["target"], refit=request["refit"], strip_weights=request["strip_weights"],
            cache_dir=Path(request["cache_dir"]) if request["cache_dir"] else None,
            progress=lambda stage, fraction: _emit({"progress": [stage, fraction]}))
    except TrtError as e:
        _emit({"error": type(e).__name__, "message": str(e)})
    except Exception as e:  # a bug or a library error: the traceback goes to the console
        traceback.print_exc()
        _emit({"error": "BuildError", "message": f"{type(e).__name__}: {e}"})
    else:
        _emit({"report": dataclasses.asdict(report)})


if __name__ == "__main__":
    main()
