"""install.py as the WebUI runs it: a subprocess with the WebUI folder on PYTHONPATH, at every start."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STUB = ROOT / "tests" / "webui_stub"

FAKE_PIP = """#!/bin/sh
echo "$@" >> "{log}"
case "$*" in *{fail}*) {say_why} >&2; exit 1;; esac
exit 0
"""
NO_MATCH = 'echo "ERROR: no matching distribution"'
PIP_NO_NVIDIA_INDEX = ROOT / "tests" / "data" / "pip-tensorrt-cu12-nvidia-index-unreachable.txt"


@pytest.fixture
def extension(tmp_path: Path) -> Path:
    """A copy of the extension (install.py writes its status file beside itself)."""
    dest = tmp_path / "extensions" / "trt"
    shutil.copytree(ROOT / "trt_lib", dest / "trt_lib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "install.py", dest / "install.py")
    return dest


def run_installer(tmp_path: Path, extension: Path, fail: str, say_why: str = NO_MATCH,
                  config: dict | None = None, env_backend: str | None = None
                  ) -> tuple[list[str], subprocess.CompletedProcess]:
    log = tmp_path / "pip.log"
    pip = tmp_path / "fake-python"
    pip.write_text(FAKE_PIP.format(log=log, fail=fail, say_why=say_why))
    pip.chmod(pip.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "config.json").write_text(json.dumps({"trt_backend": "tensorrt"} if config is None else config))
    env = {**os.environ, "PYTHONPATH": str(STUB), "WEBUI_STUB_PIP_PYTHON": str(pip)}
    env.pop("SD_WEBUI_TRT_BACKEND", None)
    if env_backend:
        env["SD_WEBUI_TRT_BACKEND"] = env_backend
    result = subprocess.run([sys.executable, str(extension / "install.py")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    return (log.read_text().splitlines() if log.exists() else []), result


def test_missing_backend_is_installed(tmp_path, extension):
    pip_calls, result = run_installer(tmp_path, extension, fail="never")
    assert result.returncode == 0, result.stderr
    assert any("install tensorrt-cu12>=10.0,!=11.3.* --prefer-binary" in c for c in pip_calls)  # not installed here
    assert not (tmp_path / "=10.0").exists()  # the specifier reached pip, not a shell redirection
    assert not any("onnx" in c.split() for c in pip_calls)  # present packages are left alone
    status = json.loads((extension / "install-status.json").read_text())
    assert status["failed"] == {} and "tensorrt" in status["installed"]


@pytest.mark.catalogue("install")
def test_failed_install_is_reported_and_the_webui_still_starts(tmp_path, extension, webui, monkeypatch):
    pip_calls, result = run_installer(tmp_path, extension, fail="tensorrt-cu12")
    assert result.returncode == 0 and "could not install tensorrt" in result.stdout
    status_file = extension / "install-status.json"
    assert "no matching distribution" in json.loads(status_file.read_text())["failed"]["tensorrt"]
    tab = webui.module("trt_webui.tab")
    monkeypatch.setattr(tab, "INSTALL_STATUS", status_file)
    assert webui.script_callbacks.ui_tabs_callback()  # the tab builds
    assert "install.py could not install tensorrt" in tab.status_markdown()


@pytest.mark.catalogue("install")
def test_a_tensorrt_install_that_cannot_reach_nvidias_index_says_why_in_the_console_and_the_tab(
        tmp_path, extension, webui, monkeypatch):
    """Issue 11, defect 6, with pip's real output (recorded) coming from the pip that install.py runs."""
    _, result = run_installer(tmp_path, extension, fail="tensorrt-cu12", say_why=f'cat "{PIP_NO_NVIDIA_INDEX}"')
    cause = "is a placeholder on PyPI that downloads the real wheel from NVIDIA's package index"
    assert result.returncode == 0 and cause in result.stdout and "Allow https://pypi.nvidia.com/" in result.stdout
    tab = webui.module("trt_webui.tab")
    monkeypatch.setattr(tab, "INSTALL_STATUS", extension / "install-status.json")
    status = tab.status_markdown()
    assert cause in status and "choose TensorRT for RTX (tensorrt_rtx) in Settings → TensorRT" in status


@pytest.mark.catalogue("install")
@pytest.mark.parametrize("config, env_backend, backend", [
    ({}, "tensorrt_rtx", "tensorrt_rtx"),  # no value yet: the variable gives the default
    ({"trt_backend": "tensorrt_rtx"}, None, "tensorrt_rtx"),
    ({"trt_backend": "tensorrt"}, "tensorrt_rtx", "tensorrt"),  # the setting wins, and install.py says so
])
def test_install_py_installs_the_backend_the_setting_holds(tmp_path, extension, config, env_backend, backend):
    pip_calls, result = run_installer(tmp_path, extension, fail="never", config=config, env_backend=env_backend)
    assert result.returncode == 0, result.stderr
    assert json.loads((extension / "install-status.json").read_text())["backend"] == backend
    assert any("install tensorrt-cu12" in c for c in pip_calls) == (backend == "tensorrt")  # rtx is present here
    overruled = env_backend is not None and env_backend != backend
    assert ("SD_WEBUI_TRT_BACKEND=tensorrt_rtx is not used" in result.stdout) == overruled


@pytest.fixture
def rtx_by_variable(monkeypatch):
    """The variable set before the WebUI starts (the settings are registered at its start)."""
    monkeypatch.setenv("SD_WEBUI_TRT_BACKEND", "tensorrt_rtx")


@pytest.mark.catalogue("install")
def test_the_webui_runs_the_backend_install_py_installed(rtx_by_variable, webui, monkeypatch):
    """Issue 11, defect 5: with the variable set, the WebUI ran TensorRT and told the user to install
    tensorrt-cu12 while install.py had installed TensorRT for RTX."""
    assert webui.shared.opts.trt_backend == "tensorrt_rtx"
    assert webui.module("trt_webui.settings").backend() == "tensorrt_rtx"
    real_import = importlib.import_module

    def missing(name, *args, **kwargs):
        if name == "tensorrt_rtx":
            raise ImportError("No module named 'tensorrt_rtx'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", missing)
    status = webui.module("trt_webui.tab").status_markdown()
    assert "**TensorRT for RTX is not available**" in status and "install tensorrt-rtx-cu" in status
    assert "tensorrt-cu12" not in status
