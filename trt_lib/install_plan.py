"""What install.py installs, kept here so it is tested without the WebUI.

Rules: install only what is missing; never upgrade a package the WebUI pins (it would flip back on the next
start); never let a failed install stop the WebUI: record it in a status file the TensorRT tab reads.
"""

from __future__ import annotations

import importlib.metadata
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .store import atomic_write_text

BACKEND_LABELS = {"tensorrt": "TensorRT", "tensorrt_rtx": "TensorRT for RTX"}


@dataclass(frozen=True)
class Requirement:
    """One package: how to tell it is there, and how to install it."""

    name: str
    """Distribution (or module) name given to the WebUI's ``launch.is_installed``."""
    pip: str
    """Arguments for ``launch.run_pip``."""
    why: str


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


def cuda_flavour() -> str:
    """``cu13`` when the installed torch is a CUDA 13 build, else ``cu12`` (the WebUI's default torch)."""
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "cu12"
    return "cu13" if "+cu13" in version else "cu12"


def requirements(backend: str, flavour: str) -> list[Requirement]:
    """Packages the extension needs with ``backend``. onnx goes in without dependencies because it would
    otherwise upgrade the protobuf the WebUI pins. Version specifiers are quoted: the WebUI runs pip through
    a shell, where an unquoted ``>=`` is a redirection."""
    engine = {
        "tensorrt": Requirement(f"tensorrt_{flavour}", f'install "tensorrt-{flavour}>=10.0"',
                                "builds and runs engines"),
        "tensorrt_rtx": Requirement(f"tensorrt_rtx_{flavour}", f"install tensorrt-rtx-{flavour}",
                                    "builds and runs engines on RTX GPUs"),
    }
    if backend not in engine:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(engine)}")
    return [
        Requirement("onnx", 'install --no-deps "onnx>=1.14"', "the UNet is exported to ONNX"),
        Requirement("polygraphy", 'install "polygraphy>=0.49"', "engine inspection and loading helpers"),
        Requirement("safetensors", "install safetensors", "reads LoRA files"),
        Requirement("filelock", "install filelock", "keeps the engine manifest safe with two writers"),
        engine[backend],
    ]


def install(backend: str, is_installed: Callable[[str], bool], run_pip: Callable[[str, str], object],
            status_path: Path, flavour: str | None = None) -> InstallStatus:
    """Install what is missing; never raises for a failed package, records it instead."""
    status = InstallStatus(backend, when=time.strftime("%Y-%m-%d %H:%M:%S"))
    for req in requirements(backend, flavour or cuda_flavour()):
        if is_installed(req.name):
            continue
        try:
            run_pip(req.pip, f"{req.name} for the TensorRT extension ({req.why})")
            status.installed.append(req.name)
        except Exception as e:  # the WebUI's run_pip raises RuntimeError with pip's output
            status.failed[req.name] = (f"{str(e).strip()[-600:]}\nInstall it by hand in the WebUI's Python: "
                                       f"python -m pip {req.pip}")
    try:
        atomic_write_text(status_path, json.dumps(asdict(status), indent=1))
    except OSError:
        pass  # a read-only extension folder must not stop the WebUI; the tab then checks imports itself
    return status
