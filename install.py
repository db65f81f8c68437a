"""Run by the WebUI at every start (unless --skip-install): installs what the TensorRT extension misses.

Quiet when everything is present; a failed install is recorded for the TensorRT tab and never stops the
WebUI. The backend comes from the setting "TensorRT backend" in the WebUI's config.json, or from the
environment variable SD_WEBUI_TRT_BACKEND; ONNX Runtime is installed only while "Run engines with" is the
reference runtime.
"""

import json
import os
import sys
from pathlib import Path

import launch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from trt_lib.install_plan import RUN_WITH, install  # noqa: E402


def configured(key: str, default: str) -> str:
    """A setting from the WebUI's config.json (the WebUI starts install.py in its own folder)."""
    try:
        return str(json.loads(Path("config.json").read_text(encoding="utf-8")).get(key, default))
    except (OSError, ValueError, AttributeError):
        return default


status = install(os.environ.get("SD_WEBUI_TRT_BACKEND") or configured("trt_backend", "tensorrt"),
                 launch.is_installed, launch.run_pip, HERE / "install-status.json",
                 run_with=configured("trt_run_with", RUN_WITH[0]))
for name, why in status.failed.items():
    print(f"[TensorRT] could not install {name}; the WebUI starts without it. {why}")
