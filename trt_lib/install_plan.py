"""What install.py installs, kept here so it is tested without the WebUI.

Rules: install only what is missing; never upgrade a package the WebUI pins (it would flip back on the next
start); never let a failed install stop the WebUI: record it in a status file the TensorRT tab reads.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .store.engine_store import atomic_write_text

BACKEND_LABELS = {"tensorrt": "TensorRT", "tensorrt_rtx": "TensorRT for RTX"}
BACKEND_ENV = "SD_WEBUI_TRT_BACKEND"
"""Environment variable giving the default of the backend setting (Settings → TensorRT), where the WebUI's
config.json has no value for it yet: the setting is the one source of truth, for install.py and the WebUI."""


def default_backend(environ: Mapping[str, str] = os.environ) -> str:
    """The backend setting's default: ``SD_WEBUI_TRT_BACKEND`` when it names a backend, else TensorRT."""
    value = environ.get(BACKEND_ENV, "")
    return value if value in BACKEND_LABELS else "tensorrt"


def configured(config: Path, key: str, default: str) -> str:
    """A setting as the WebUI will read it from its config.json; ``default`` where it has none (yet)."""
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get(key, default)
    except (OSError, ValueError, AttributeError):
        return default
    return value if isinstance(value, str) else default


def configured_backend(config: Path, environ: Mapping[str, str] = os.environ) -> str:
    """The backend as the WebUI will read its setting: config.json's ``trt_backend``, else the default."""
    value = configured(config, "trt_backend", "")
    return value if value in BACKEND_LABELS else default_backend(environ)


def backend_note(chosen: str, environ: Mapping[str, str] = os.environ) -> str:
    """Says so when ``SD_WEBUI_TRT_BACKEND`` asks for another backend than the setting holds; "" otherwise."""
    wanted = environ.get(BACKEND_ENV, "")
    if not wanted or wanted == chosen:
        return ""
    return (f"{BACKEND_ENV}={wanted} is not used: it only sets the default, and Settings → TensorRT → \"Backend "
            f"that builds and runs engines\" holds {chosen}. Choose the backend there (install.py then installs "
            "it at the next start).")


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


NVIDIA_INDEX = "https://pypi.nvidia.com/"
"""Where ``tensorrt-cu12``/``-cu13`` (placeholders on PyPI) download their real wheels while installing."""


def pip_error_summary(output: str, limit: int = 600) -> str:
    """The lines of pip's output that say what went wrong, whole: its ``ERROR:`` lines, the lowercase
    ``error:`` lines and ``×``/``╰─>`` lines of a failed build step, else the last lines."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    chosen = [line for line in lines if re.match(r"(error:|×|╰─>)", line, re.IGNORECASE)] or lines[-3:]
    text = "\n".join(chosen)
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"


def failure_text(req: Requirement, backend: str, output: str) -> str:
    """What failed and what to do, for the console and the tab: the cause where pip's output shows a known
    one, pip's own error lines, and the fix."""
    summary = pip_error_summary(output)
    by_hand = f"python -m pip {req.pip}"
    found = re.search(r"The installation of (\S+) for version (\S+) failed", output)
    if NVIDIA_INDEX.rstrip("/") in output and found:
        other = ("; or choose TensorRT for RTX (tensorrt_rtx) in Settings → TensorRT, whose wheels come from "
                 "PyPI, and restart" if backend == "tensorrt" else "")
        return (f"{found.group(1)} {found.group(2)} is a placeholder on PyPI that downloads the real wheel from "
                f"NVIDIA's package index ({NVIDIA_INDEX}) while installing, and that index could not be reached "
                f"from this machine.\n{summary}\nAllow {NVIDIA_INDEX} on this machine and restart the WebUI, or "
                f"install by hand in the WebUI's Python: python -m pip {req.pip} --extra-index-url "
                f"{NVIDIA_INDEX}{other}.")
    return f"{summary}\nInstall it by hand in the WebUI's Python and restart the WebUI: {by_hand}"


def requirements(backend: str, flavour: str, run_with: str = RUN_WITH[0], cuda: bool = False) -> list[Requirement]:
    """Packages the extension needs with ``backend``, the engine package checked by its module name so that
    either CUDA flavour counts. onnx goes in without dependencies because it would otherwise upgrade the
    protobuf the WebUI pins (3.20), and below 1.19, the last releases that import with that protobuf and
    need no ``ml_dtypes``. Version specifiers are quoted: the WebUI runs pip through a shell, where an unquoted
    ``>=`` is a redirection. polygraphy is not among them: nothing uses it (backends/trt10.py says why its
    loaders do not fit), so users are not made to download it. ONNX Runtime only while "Run engines with" is
    the reference runtime: the GPU build with a CUDA torch, else the CPU one (either provides ``onnxruntime``)."""
    engine = {
        # 11.3's REFIT builds may compute wrong results (its release notes); backends.trt10 refuses them too
        "tensorrt": Requirement("tensorrt", f'install "tensorrt-{flavour}>=10.0,!=11.3.*"', "builds and runs engines"),
        "tensorrt_rtx": Requirement("tensorrt_rtx", f"install tensorrt-rtx-{flavour}",
                                    "builds and runs engines on RTX GPUs"),
    }
    if backend not in engine:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(engine)}")
    found = [
        Requirement("onnx", 'install --no-deps "onnx>=1.14,<1.19"', "the UNet is exported to ONNX", probe="onnx"),
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
            status.failed[req.name] = failure_text(req, backend, str(e))
    try:
        atomic_write_text(status_path, json.dumps(asdict(status), indent=1))
    except OSError:
        pass  # a read-only extension folder must not stop the WebUI; the tab then checks imports itself
    return status
