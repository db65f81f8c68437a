"""The "Run engines with" choice: TensorRT (the selected backend, the default) or ONNX Runtime (reference).

ONNX Runtime runs each engine's ONNX export behind the same runner interface, so everything after the build
(provider, job check, LoRA refit, engine check) works on a machine where no TensorRT engine can run. It is
chosen only by the user, for checking, never for speed; wherever a user sees it, it is named ONNX Runtime:
its dropdown entries are ``[ORT] <checkpoint>`` and the job's infotext says which runtime ran.
"""

from __future__ import annotations

from typing import Any

from trt_lib.engines import onnx_runtime
from trt_lib.engines.unet_session import UnetSession
from trt_lib.errors import BackendUnavailableError
from trt_lib.store.engine_store import Runtime

from . import settings

PREFIX = "[ORT] "
INFO_KEY = "UNet runtime"


def selected() -> bool:
    return settings.run_with() == onnx_runtime.LABEL


def runtime() -> Runtime | None:
    """What engines are checked against under ONNX Runtime (only their ONNX must be there); None when it is
    not installed (:func:`problem` says why)."""
    try:
        return Runtime(onnx_runtime.NAME, onnx_runtime.version(), None, runs_onnx=True)
    except BackendUnavailableError:
        return None


def problem() -> str:
    """Why ONNX Runtime cannot run here, with the fix; "" when it can."""
    try:
        onnx_runtime.version()
    except BackendUnavailableError as e:
        return str(e)
    return ""


def status() -> str:
    """The tab's line about it, shown while it is selected."""
    why = problem()
    if why:
        return f"**Engines run with ONNX Runtime (reference), which is not available**: {why}"
    device = "CUDA" if onnx_runtime.providers()[0] == onnx_runtime.CUDA else "CPU"
    return (f"**Engines run with:** ONNX Runtime {onnx_runtime.version()} (reference, {device}): their ONNX runs "
            "in place of the engine, to check it, not for speed. Set Settings → TensorRT → 'Run engines with' "
            "back to TensorRT for speed.")


def note_in_infotext(p: Any, session: UnetSession) -> None:
    """Say in the job's infotext which runtime runs its UNet calls (the loaded runners' names)."""
    names = sorted({runner.runtime_name for _, runner in session.loaded()})
    if names:
        p.extra_generation_params[INFO_KEY] = ", ".join(names)
