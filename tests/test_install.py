"""install.py's plan: only what is missing, never an upgrade of WebUI pins, failures recorded not raised."""

from __future__ import annotations

import json

import pytest

from trt_lib.install_plan import InstallStatus, install


def run(tmp_path, present: set[str], fail: set[str] = frozenset(), backend: str = "tensorrt_rtx"):
    calls = []

    def run_pip(args: str, desc: str) -> None:
        calls.append(args)
        if any(name in args for name in fail):
            raise RuntimeError(f"Couldn't install {desc}.\nCommand: pip {args}\nError code: 1\nstderr: no network")

    status = install(backend, lambda name: name in present, run_pip, tmp_path / "status.json", flavour="cu12")
    return status, calls


ALL = {"onnx", "polygraphy", "safetensors", "filelock", "tensorrt_rtx_cu12", "tensorrt_cu12"}


def test_nothing_to_do_when_all_present(tmp_path):
    status, calls = run(tmp_path, ALL)
    assert calls == [] and status.installed == [] and status.failed == {}


@pytest.mark.catalogue("install")
def test_missing_packages_are_installed_without_touching_protobuf(tmp_path):
    status, calls = run(tmp_path, ALL - {"onnx", "tensorrt_rtx_cu12"})
    assert calls == ['install --no-deps "onnx>=1.14"', "install tensorrt-rtx-cu12"]
    assert status.installed == ["onnx", "tensorrt_rtx_cu12"]
    assert InstallStatus.read(tmp_path / "status.json") == status


@pytest.mark.catalogue("install")
def test_failed_install_is_recorded_with_the_fix_and_the_rest_goes_on(tmp_path):
    status, calls = run(tmp_path, ALL - {"tensorrt_cu12", "polygraphy"}, fail={"tensorrt-cu12"}, backend="tensorrt")
    assert status.installed == ["polygraphy"]
    assert "no network" in status.failed["tensorrt_cu12"]
    assert 'python -m pip install "tensorrt-cu12>=10.0"' in status.failed["tensorrt_cu12"]
    assert json.loads((tmp_path / "status.json").read_text())["failed"]


@pytest.mark.catalogue("install")
def test_unreadable_status_file_reads_as_none(tmp_path):
    (tmp_path / "status.json").write_text("{broken")
    assert InstallStatus.read(tmp_path / "status.json") is None
