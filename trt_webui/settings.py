"""The "TensorRT" settings section and typed access to it."""

from __future__ import annotations

import os
from pathlib import Path

from modules import paths, shared

from trt_lib.install_plan import BACKEND_ENV, BACKEND_LABELS, RUN_WITH, default_backend

EXTENSION_DIR = Path(__file__).resolve().parent.parent
SECTION = ("tensorrt", "TensorRT")
ON_UNCOVERED = {"raise": "Stop with a message that says which engine to build",
                "fallback": "Use the PyTorch UNet for that job"}


def default_engine_dir() -> str:
    return os.path.join(paths.models_path, "Unet-trt")


def register() -> None:
    """Add the settings (on_ui_settings callback); gradio is imported here, where the UI is built, so that
    the provider, which reads the settings, runs without it."""
    import gradio as gr

    options = {
        "trt_backend": shared.OptionInfo(
            default_backend(), "Backend that builds and runs engines", gr.Radio,
            {"choices": list(BACKEND_LABELS)}).info(
            "tensorrt = TensorRT 10 (any NVIDIA GPU it supports); tensorrt_rtx = TensorRT for RTX (GeForce RTX "
            "20 series and later, small download, engines built per GPU). Restart after changing: install.py "
            f"installs the chosen one. Default: tensorrt, or {BACKEND_ENV} where set."),
        "trt_run_with": shared.OptionInfo(
            RUN_WITH[0], "Run engines with", gr.Radio, {"choices": list(RUN_WITH)}, onchange=_refresh_unets).info(
            "TensorRT: the backend above, fast. ONNX Runtime (reference): runs each engine's ONNX export instead, "
            "on its CUDA provider with onnxruntime-gpu, else the CPU; to check engines, or to try the extension "
            "where no TensorRT engine can run. Not for speed. Dropdown entries then read [ORT] <checkpoint>; "
            "restart after choosing it the first time (install.py installs ONNX Runtime)."),
        "trt_on_uncovered": shared.OptionInfo(
            "raise", "When no engine covers a generation (size, batch, hires fix, prompt length)", gr.Radio,
            {"choices": list(ON_UNCOVERED)}).info(
            "raise: stop before the first step and say which engine to build; fallback: run that job on the "
            "PyTorch UNet and switch back afterwards"),
        "trt_engine_dir": shared.OptionInfo(
            default_engine_dir(), "Folder for engines and their manifest").info("restart after changing"),
        "trt_compute_capability": shared.OptionInfo(
            "", "Build for compute capability (TensorRT for RTX only, e.g. 8.9); empty = this GPU").info(
            "lets you build on one machine for another GPU"),
        "trt_quicksettings_hint": shared.OptionHTML(
            "Add <code>sd_unet</code> to <b>Settings → User interface → Quicksettings list</b> to switch "
            "between engines ([TRT] …) and the PyTorch UNet from the top of the page."),
    }
    for key, info in shared.options_section(SECTION, options).items():
        shared.opts.add_option(key, info)


def engine_dir() -> Path:
    return Path(getattr(shared.opts, "trt_engine_dir", "") or default_engine_dir())


def backend() -> str:
    """The chosen backend, the one source of truth install.py reads too (from config.json)."""
    value = getattr(shared.opts, "trt_backend", None)
    return value if value in BACKEND_LABELS else default_backend()


def run_with() -> str:
    value = getattr(shared.opts, "trt_run_with", RUN_WITH[0])
    return value if value in RUN_WITH else RUN_WITH[0]


def _refresh_unets() -> None:
    """The dropdown's entries are named after the runtime: list them again when it changes."""
    from modules import sd_unet

    sd_unet.list_unets()


def falls_back() -> bool:
    return getattr(shared.opts, "trt_on_uncovered", "raise") == "fallback"


def compute_capability() -> str | None:
    return (getattr(shared.opts, "trt_compute_capability", "") or "").strip() or None
