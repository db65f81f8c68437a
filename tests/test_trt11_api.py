"""The backend's TensorRT calls against a module with only TensorRT 11's names.

``tensorrt-cu12>=10.0`` installs 11.x today, which removed EXPLICIT_BATCH, the FP16/INT8… builder flags and
weak typing, renumbered the enums and keeps STRONGLY_TYPED only as an ignored flag. Full TensorRT cannot be
installed here, so a small fake module offering just the 11.x names drives the real build code (network
flags, builder config, flags, profiles, timing cache, progress monitor); anything else it touches fails.
"""

from __future__ import annotations

import types

import pytest
import torch
from fake_tensorrt import INPUTS, fake_tensorrt

from trt_lib.backends import get_backend, trt10
from trt_lib.backends.tensorrt_runtime import _torch_dtype
from trt_lib.errors import BuildTargetError

PROFILE = {"sample": ((1, 4, 8, 8), (2, 4, 8, 8), (4, 4, 16, 16)), "timesteps": ((1,), (2,), (4,))}


@pytest.fixture
def build(monkeypatch, tmp_path):
    """Build with the "tensorrt" backend on a fake module, as if on a GPU of compute capability 8.9."""
    monkeypatch.setattr(trt10, "gpu_capability", lambda: "8.9")

    def run(trt: types.ModuleType, refit: bool = False, strip_weights: bool = False):
        # ``build`` runs ``build_here`` in a child process, which a monkeypatched module does not reach: the
        # checks ``build`` makes first, then the build itself in this process
        monkeypatch.setattr(trt10.Backend, "module", lambda self: trt)
        backend, engine = get_backend("tensorrt"), tmp_path / "e.engine"
        target = backend.check_build(None, refit)
        report = backend.build_here(tmp_path / "unet.onnx", engine, [PROFILE], target=target,
                                    refit=refit, strip_weights=strip_weights, progress=lambda stage, f: None,
                                    cache_dir=tmp_path)
        return report, engine

    return run


@pytest.mark.catalogue("backends")
@pytest.mark.parametrize("refit", [False, True])
def test_a_build_uses_only_tensorrt_11_names(build, tmp_path, refit):
    trt, calls = fake_tensorrt("11.4.0.106")
    report, engine = build(trt, refit=refit, strip_weights=refit)
    assert engine.read_bytes() == b"plan" and report.backend_version == "11.4.0.106"
    assert ("network flags", 1 << 0) in calls
    flags = {trt.BuilderFlag.REFIT, trt.BuilderFlag.STRIP_PLAN} if refit else set()
    assert ("builder flags", frozenset(flags), 1) in calls
    assert [c[1] for c in calls if c[0] == "shape"] == list(INPUTS)
    assert (tmp_path / "tensorrt-timing.cache").read_bytes() == b"timing cache"


@pytest.mark.catalogue("backends")
def test_a_release_without_the_strongly_typed_flag_still_builds(build):
    trt, calls = fake_tensorrt("12.0.0", strongly_typed_flag=False)
    build(trt)
    assert ("network flags", 0) in calls


@pytest.mark.catalogue("backends")
def test_refittable_builds_are_refused_on_tensorrt_11_3(build, tmp_path):
    trt, calls = fake_tensorrt("11.3.0.5")
    with pytest.raises(BuildTargetError) as caught:
        build(trt, refit=True, strip_weights=True)
    text = str(caught.value)
    assert "TensorRT 11.3.0.5 can build refittable engines that compute wrong results" in text
    assert 'python -m pip install "tensorrt-cu12>=10.0,!=11.3.*"' in text or "tensorrt-cu13" in text
    assert calls == [] and not (tmp_path / "e.engine").exists()
    build(trt)  # without refit, 11.3 builds
    assert (tmp_path / "e.engine").read_bytes() == b"plan"


@pytest.mark.catalogue("backends")
def test_engine_dtypes_are_read_by_name():
    trt, _ = fake_tensorrt("11.4.0")  # no BF16 member: the others still map
    assert _torch_dtype(trt, trt.DataType.HALF) == torch.float16
    assert _torch_dtype(trt, trt.DataType.INT64) == torch.int64


def test_network_flags_of_the_installed_tensorrt_for_rtx():
    rtx = pytest.importorskip("tensorrt_rtx")
    assert trt10.network_flags(rtx) == 1 << int(rtx.NetworkDefinitionCreationFlag.STRONGLY_TYPED)

