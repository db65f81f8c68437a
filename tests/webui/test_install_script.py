"""install.py as the WebUI runs it: a subprocess with the WebUI folder on PYTHONPATH, at every start."""

from __future__ import annotations

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
case "$*" in *{fail}*) echo "ERROR: no matching distribution" >&2; exit 1;; esac
exit 0
"""


@pytest.fixture
def extension(tmp_path: Path) -> Path:
    """A copy of the extension (install.py writes its status file beside itself)."""
    dest = tmp_path / "extensions" / "trt"
    shutil.copytree(ROOT / "trt_lib", dest / "trt_lib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "install.py", dest / "install.py")
    return dest


def run_installer(tmp_path: Path, extension: Path, fail: str) -> tuple[list[str], subprocess.CompletedProcess]:
    log = tmp_path / "pip.log"
    pip = tmp_path / "fake-python"
    pip.write_text(FAKE_PIP.format(log=log, fail=fail))
    pip.chmod(pip.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "config.json").write_text(json.dumps({"trt_backend": "tensorrt"}))
    env = {**os.environ, "PYTHONPATH": str(STUB), "WEBUI_STUB_PIP_PYTHON": str(pip)}
    env.pop("SD_WEBUI_TRT_BACKEND", None)
    result = subprocess.run([sys.executable, str(extension / "install.py")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    return (log.read_text().splitlines() if log.exists() else []), result


def test_missing_backend_is_installed(tmp_path, extension):
    pip_calls, result = run_installer(tmp_path, extension, fail="never")
    assert result.returncode == 0, result.stderr
    assert any("install tensorrt-cu12>=10.0 --prefer-binary" in c for c in pip_calls)  # not installed here
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
