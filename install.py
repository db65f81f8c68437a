"""Run by the WebUI at every start (unless --skip-install): installs what the TensorRT extension misses.

Quiet when everything is present; a failed install is recorded for the TensorRT tab and never stops the
WebUI. The backend is the setting Settings → TensorRT → "Backend", read from the WebUI's config.json (its
path as the WebUI's launch arguments give it); where that has no value yet, the environment variable
SD_WEBUI_TRT_BACKEND gives the default, as it does for the setting in the WebUI.
ONNX Runtime is installed only while "Run engines with" is the reference runtime.
"""

import sys
from pathlib import Path

import launch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from trt_lib.install_plan import RUN_WITH, backend_note, configured, configured_backend, install  # noqa: E402

config = Path(launch.args.ui_settings_file)
backend = configured_backend(config)
note = backend_note(backend)
if note:
    print(f"[TensorRT] {note}")
status = install(backend, launch.is_installed, launch.run_pip, HERE / "install-status.json",
                 run_with=configured(config, "trt_run_with", RUN_WITH[0]))
for name, why in status.failed.items():
    print(f"[TensorRT] could not install {name}; the WebUI starts without it. {why}")
