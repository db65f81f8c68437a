"""Engine backends: TensorRT (module ``tensorrt``, 10 or newer) and TensorRT for RTX (module ``tensorrt_rtx``).

Both share one implementation (:class:`~trt_lib.backends.trt10.Backend`), parameterised by module name and
what the module offers. Importing this package never imports a TensorRT module: a WebUI whose TensorRT
install failed must still start and say what to install.
"""

from __future__ import annotations

import importlib.util

from ..errors import TrtError
from ..install_plan import BACKEND_LABELS
from .trt10 import Backend, BuildReport

__all__ = ["BACKENDS", "Backend", "BuildReport", "available_backends", "get_backend"]

BACKENDS: dict[str, Backend] = {
    "tensorrt": Backend(
        name="tensorrt", label=BACKEND_LABELS["tensorrt"], module_name="tensorrt", min_major=10,
        targets_compute_capability=False, timing_cache=True, runtime_config=False),
    # TensorRT for RTX compiles kernels when the engine first runs: it has no build-time timing cache (its
    # ITimingCache is a deprecated no-op that would need a GPU) but a runtime cache and built-in CUDA graphs.
    "tensorrt_rtx": Backend(
        name="tensorrt_rtx", label=BACKEND_LABELS["tensorrt_rtx"], module_name="tensorrt_rtx", min_major=1,
        targets_compute_capability=True, timing_cache=False, runtime_config=True),
}
"""Every known backend, by the name the settings and the manifest use."""


def get_backend(name: str) -> Backend:
    """The backend called ``name``; :class:`TrtError` listing the known ones otherwise."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise TrtError(f"unknown engine backend {name!r}; choose one of {', '.join(BACKENDS)}") from None


def available_backends() -> list[str]:
    """Names of the known backends whose module is installed here (found, not imported: importing one can
    take seconds or fail on a missing CUDA driver, which :meth:`Backend.version` reports)."""
    return [name for name, backend in BACKENDS.items() if importlib.util.find_spec(backend.module_name)]
