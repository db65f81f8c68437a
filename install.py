"""Run by the WebUI at every start (unless --skip-install): installs what the TensorRT extension misses.

Quiet when everything is present; a failed install is recorded for the TensorRT tab and never stops the
WebUI. The backend comes from the setting "TensorRT backend" in the WebUI's config.json, or from the
environment variable SD_WEBUI_TRT_BACKEND.
"""

import json
import os
import sys
from pathlib import Path

import launch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from trt_lib.install_plan import install  # noqa: E402


def configured_backend() -> str:
    backend = os.environ.get("SD_WEBUI_TRT_BACKEND")
    if backend:
        return backend
    try:
        return json.loads(Path("config.json").read_text(encoding="utf-8")).get("trt_backend", "tensorrt")
    except (OSError, ValueError, AttributeError):
        return "tensorrt"


status = install(configured_backend(), launch.is_installed, launch.run_pip, HERE / "install-status.json")
for name, why in status.failed.items():
    print(f"[TensorRT] could not install {name}; the WebUI starts without it. {why}")
