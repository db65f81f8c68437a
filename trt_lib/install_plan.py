"""What install.py installs, kept here so it is tested without the WebUI.

Rules: install only what is missing; never upgrade a package the WebUI pins (it would flip back on the next
start); never let a failed install stop the WebUI: record it in a status file the TensorRT tab reads.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .store import atomic_write_text

BACKEND_LABELS = {"tensorrt": "TensorRT", "tensorrt_rtx": "TensorRT for RTX"}
REFERENCE_RUNTIME = "ONNX Runtime (reference)"
RUN_WITH = ("TensorRT", REFERENCE_RUNTIME)
"""The choices of the setting "Run engines with" (``trt_run_with``); the first is the default."""


@dataclass(frozen=True)
class Requirement:
    """One package: how to tell it is there, and how to install it."""

    name: str
    """Distribution (or module) name given to the WebUI's ``launch.is_installed``."""
    pip: str
    """Arguments for ``launch.run_pip``."""
    why: str
    probe: str = ""
    """A module to import as well, where a present package can still be unusable."""


@dataclass
class InstallStatus:
    """What the last install.py run did; the tab shows ``failed`` with the fix."""

    backend: str
    installed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    when: str = ""

    @classmethod
    def read(cls, path: Path) -> InstallStatus | None:
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None


def torch_cuda_major() -> int | None:
    """The CUDA major version the installed torch was built for; None for a CPU torch (or no torch).

    Read from ``torch/version.py`` without importing torch (install.py runs at every start): PyPI's torch
    wheels carry no ``+cu13`` in their version, only that file says which CUDA they were built for.
    """
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return None
    try:
        text = (Path(spec.origin).parent / "version.py").read_text(encoding="utf-8")
    except OSError:
        return None
    found = re.search(r"^cuda(?:\s*:[^=]*)?\s*=\s*['\"](\d+)", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def cuda_flavour() -> str:
    """``cu13`` when the installed torch is a CUDA 13 build, else ``cu12`` (the WebUI's default torch)."""
    major = torch_cuda_major()
    return "cu13" if major is not None and major >= 13 else "cu12"


def _imports(module: str) -> bool:
    """Whether ``module`` imports: a present but broken package (e.g. an onnx too new for the WebUI's
    protobuf) must be replaced, which ``launch.is_installed`` cannot tell."""
    try:
        importlib.import_module(module)
    except Exception:  # ImportError, or whatever a half-compatible package raises at import
        return False
    return True


def pip_error_summary(output: str, limit: int = 600) -> str:
    """The lines of pip's output that say what went wrong (``ERROR:`` lines, else the last lines), whole."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    chosen = [line for line in lines if line.startswith("ERROR")] or lines[-3:]
    text = "\n".join(chosen)
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"


def requirements(backend: str, flavour: str, run_with: str = RUN_WITH[0], cuda: bool = False) -> list[Requirement]:
    """Packages the extension needs with ``backend``, the engine package checked by its module name so that
    either CUDA flavour counts. onnx goes in without dependencies because it would otherwise upgrade the
    protobuf the WebUI pins (3.20), and below 1.19, the last releases that import with that protobuf and
    need no ``ml_dtypes``. Version specifiers are quoted: the WebUI runs pip through a shell, where an unquoted
    ``>=`` is a redirection. ONNX Runtime only while "Run engines with" is the reference runtime: the GPU build
    with a CUDA torch, else the CPU one (either provides the module ``onnxruntime``)."""
    engine = {
        "tensorrt": Requirement("tensorrt", f'install "tensorrt-{flavour}>=10.0"', "builds and runs engines"),
        "tensorrt_rtx": Requirement("tensorrt_rtx", f"install tensorrt-rtx-{flavour}",
                                    "builds and runs engines on RTX GPUs"),
    }
    if backend not in engine:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(engine)}")
    found = [
        Requirement("onnx", 'install --no-deps "onnx>=1.14,<1.19"', "the UNet is exported to ONNX", probe="onnx"),
        Requirement("polygraphy", 'install "polygraphy>=0.49"', "engine inspection and loading helpers"),
        Requirement("safetensors", "install safetensors", "reads LoRA files"),
        Requirement("filelock", "install filelock", "keeps the engine manifest safe with two writers"),
        engine[backend],
    ]
    if run_with == REFERENCE_RUNTIME:
        found.append(Requirement("onnxruntime", f"install onnxruntime{'-gpu' if cuda else ''}",
                                 "the reference runtime runs engines' ONNX"))
    return found


def install(backend: str, is_installed: Callable[[str], bool], run_pip: Callable[[str, str], object],
            status_path: Path, flavour: str | None = None,
            imports: Callable[[str], bool] = _imports, run_with: str = RUN_WITH[0],
            cuda: bool | None = None) -> InstallStatus:
    """Install what is missing or broken; never raises for a failed package, records it instead."""
    status = InstallStatus(backend, when=time.strftime("%Y-%m-%d %H:%M:%S"))
    cuda = torch_cuda_major() is not None if cuda is None else cuda
    for req in requirements(backend, flavour or cuda_flavour(), run_with, cuda):
        if is_installed(req.name) and (not req.probe or imports(req.probe)):
            continue
        try:
            run_pip(req.pip, f"{req.name} for the TensorRT extension ({req.why})")
            status.installed.append(req.name)
        except Exception as e:  # the WebUI's run_pip raises RuntimeError with pip's output
            status.failed[req.name] = (f"{pip_error_summary(str(e))}\nInstall it by hand in the WebUI's Python "
                                       f"and restart the WebUI: python -m pip {req.pip}")
    try:
        atomic_write_text(status_path, json.dumps(asdict(status), indent=1))
    except OSError:
        pass  # a read-only extension folder must not stop the WebUI; the tab then checks imports itself
    return status
