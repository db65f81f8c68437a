"""install.py's plan: only what is missing, never an upgrade of WebUI pins, failures recorded not raised."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from trt_lib.install_plan import (
    InstallStatus,
    backend_note,
    configured_backend,
    cuda_flavour,
    default_backend,
    install,
    pip_error_summary,
)


def run(tmp_path, present: set[str], fail: set[str] = frozenset(), backend: str = "tensorrt_rtx",
        broken: set[str] = frozenset()):
    calls = []

    def run_pip(args: str, desc: str) -> None:
        calls.append(args)
        if any(name in args for name in fail):
            raise RuntimeError(f"Couldn't install {desc}.\nCommand: pip {args}\nError code: 1\nstderr: no network")

    status = install(backend, lambda name: name in present, run_pip, tmp_path / "status.json", flavour="cu12",
                     imports=lambda module: module not in broken)
    return status, calls


ALL = {"onnx", "safetensors", "filelock", "tensorrt_rtx", "tensorrt"}


def test_nothing_to_do_when_all_present(tmp_path):
    status, calls = run(tmp_path, ALL)
    assert calls == [] and status.installed == [] and status.failed == {}


@pytest.mark.catalogue("install")
def test_missing_packages_are_installed_without_touching_protobuf(tmp_path):
    status, calls = run(tmp_path, ALL - {"onnx", "tensorrt_rtx"})
    assert calls == ['install --no-deps "onnx>=1.14,<1.19"', "install tensorrt-rtx-cu12"]
    assert status.installed == ["onnx", "tensorrt_rtx"]
    assert InstallStatus.read(tmp_path / "status.json") == status


@pytest.mark.catalogue("install")
def test_failed_install_is_recorded_with_the_fix_and_the_rest_goes_on(tmp_path):
    status, calls = run(tmp_path, ALL - {"tensorrt", "filelock"}, fail={"tensorrt-cu12"}, backend="tensorrt")
    assert status.installed == ["filelock"]
    assert "no network" in status.failed["tensorrt"]
    assert 'python -m pip install "tensorrt-cu12>=10.0,!=11.3.*"' in status.failed["tensorrt"]
    assert json.loads((tmp_path / "status.json").read_text())["failed"]


@pytest.mark.catalogue("install")
def test_unreadable_status_file_reads_as_none(tmp_path):
    (tmp_path / "status.json").write_text("{broken")
    assert InstallStatus.read(tmp_path / "status.json") is None


@pytest.mark.catalogue("install")
def test_an_onnx_that_does_not_import_is_replaced_by_a_compatible_one(tmp_path):
    status, calls = run(tmp_path, ALL, broken={"onnx"})
    assert calls == ['install --no-deps "onnx>=1.14,<1.19"'] and status.installed == ["onnx"]


@pytest.mark.parametrize("version_py, flavour", [
    ("__version__ = '2.14.1'\ncuda: Optional[str] = '13.0'\n", "cu13"),
    ("__version__ = '2.1.2+cu121'\ncuda = '12.1'\n", "cu12"),
    ("__version__ = '2.13.0+cpu'\ncuda: Optional[str] = None\n", "cu12"),
])
def test_cuda_flavour_is_read_from_torch_version_py(tmp_path, monkeypatch, version_py, flavour):
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("")
    (tmp_path / "torch" / "version.py").write_text(version_py)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torch")  # find_spec must look at the fake package, not the loaded torch
    try:
        assert cuda_flavour() == flavour
    finally:
        monkeypatch.undo()
        importlib.import_module("torch")


@pytest.mark.catalogue("install")
def test_pip_errors_are_summarised_from_their_error_lines():
    output = "Collecting tensorrt-cu12\n  Downloading ...\n" + "x" * 2000 + (
        "\nERROR: Could not find a version that satisfies the requirement tensorrt-cu12\n"
        "ERROR: No matching distribution found for tensorrt-cu12")
    summary = pip_error_summary(output)
    assert summary.splitlines() == ["ERROR: Could not find a version that satisfies the requirement tensorrt-cu12",
                                    "ERROR: No matching distribution found for tensorrt-cu12"]
    assert pip_error_summary("a\nb\nc\nd") == "b\nc\nd"


PIP_NO_NVIDIA_INDEX = Path(__file__).parent / "data" / "pip-tensorrt-cu12-nvidia-index-unreachable.txt"
"""The WebUI's run_pip error for `pip install "tensorrt-cu12>=10.0"` where only PyPI can be reached, recorded
on this project's development machine (2026-12-02, pip 24, tensorrt-cu12 11.4.0.106)."""


@pytest.mark.catalogue("install")
def test_a_tensorrt_install_that_cannot_reach_nvidias_index_says_why_and_what_to_do(tmp_path):
    """Issue 11, defect 6: the tab showed pip's last lines ("See above for details"), not the cause."""
    def run_pip(args: str, desc: str) -> None:
        raise RuntimeError(PIP_NO_NVIDIA_INDEX.read_text(encoding="utf-8"))

    status = install("tensorrt", lambda name: name != "tensorrt", run_pip, tmp_path / "status.json", flavour="cu12")
    why = status.failed["tensorrt"]
    assert why.startswith("tensorrt-cu12-libs 11.4.0.106 is a placeholder on PyPI that downloads the real wheel "
                          "from NVIDIA's package index (https://pypi.nvidia.com/) while installing, and that index "
                          "could not be reached from this machine.")
    assert "error: metadata-generation-failed" in why.splitlines()  # pip's lowercase error lines are kept
    assert "Allow https://pypi.nvidia.com/ on this machine" in why
    assert 'python -m pip install "tensorrt-cu12>=10.0,!=11.3.*" --extra-index-url https://pypi.nvidia.com/' in why
    assert "choose TensorRT for RTX (tensorrt_rtx) in Settings → TensorRT" in why
    assert "See above for details" not in why


def test_lowercase_pip_error_lines_are_summarised():
    output = PIP_NO_NVIDIA_INDEX.read_text(encoding="utf-8")
    assert pip_error_summary(output).splitlines() == [
        "error: subprocess-exited-with-error", "× Preparing metadata (pyproject.toml) did not run successfully.",
        "╰─> [125 lines of output]", "error: metadata-generation-failed",
        "× Encountered error while generating package metadata.", "╰─> tensorrt_cu12_libs"]


@pytest.mark.catalogue("install")
def test_the_backend_setting_is_the_one_source_of_truth_and_the_variable_its_default(tmp_path):
    """Issue 11, defect 5: SD_WEBUI_TRT_BACKEND steered install.py only, while the WebUI ran the setting."""
    config = tmp_path / "config.json"
    rtx = {"SD_WEBUI_TRT_BACKEND": "tensorrt_rtx"}
    assert configured_backend(config, {}) == default_backend({}) == "tensorrt"  # no config.json yet
    assert configured_backend(config, rtx) == default_backend(rtx) == "tensorrt_rtx"
    assert default_backend({"SD_WEBUI_TRT_BACKEND": "cuda"}) == "tensorrt"  # not a backend: ignored
    config.write_text(json.dumps({"sd_model_checkpoint": "x"}))
    assert configured_backend(config, rtx) == "tensorrt_rtx"  # saved before the extension came
    config.write_text(json.dumps({"trt_backend": "tensorrt"}))
    assert configured_backend(config, rtx) == "tensorrt"  # the setting wins, and says so
    assert backend_note("tensorrt", rtx).startswith("SD_WEBUI_TRT_BACKEND=tensorrt_rtx is not used")
    assert backend_note("tensorrt_rtx", rtx) == backend_note("tensorrt", {}) == ""


@pytest.mark.catalogue("install")
@pytest.mark.parametrize(("run_with", "cuda", "expected"), [
    ("TensorRT", True, []),
    ("ONNX Runtime (reference)", False, ["install onnxruntime"]),
    ("ONNX Runtime (reference)", True, ["install onnxruntime-gpu"]),
])
def test_onnx_runtime_is_installed_only_for_the_reference_runtime(tmp_path, run_with, cuda, expected):
    calls = []
    status = install("tensorrt", lambda name: name in ALL, lambda args, desc: calls.append(args),
                     tmp_path / "status.json", flavour="cu12", run_with=run_with, cuda=cuda)
    assert calls == expected and status.installed == (["onnxruntime"] if expected else [])
    calls.clear()
    install("tensorrt", lambda name: name in ALL | {"onnxruntime"}, lambda args, desc: calls.append(args),
            tmp_path / "status.json", flavour="cu12", run_with=run_with, cuda=cuda)
    assert calls == []  # either build provides the module onnxruntime
