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

from trt_lib.backends import get_backend, trt10
from trt_lib.backends.tensorrt_runtime import _torch_dtype
from trt_lib.errors import BuildTargetError

INPUTS = ("sample", "timesteps")
PROFILE = {"sample": ((1, 4, 8, 8), (2, 4, 8, 8), (4, 4, 16, 16)), "timesteps": ((1,), (2,), (4,))}


def enum(**members: int) -> type:
    return type("Enum", (), members)


def fake_tensorrt(version: str, *, strongly_typed_flag: bool = True) -> tuple[types.ModuleType, list]:
    """A module with the TensorRT 11 Python names the backend may use, recording what it is asked."""
    calls: list = []
    trt = types.ModuleType("tensorrt")  # a module object: hashable, like the real one (logger_class caches on it)
    trt.__version__ = version

    class ILogger:
        ERROR, WARNING = 1, 2

        def __init__(self) -> None:
            pass

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    class Network:
        num_inputs = len(INPUTS)

        def get_input(self, index: int) -> types.SimpleNamespace:
            return types.SimpleNamespace(name=INPUTS[index])

    class OnnxParser:
        num_errors = 0

        def __init__(self, network: Network, logger: ILogger) -> None:
            pass

        def parse_from_file(self, path: str) -> bool:
            calls.append(("parse", path))
            return True

    class OptimizationProfile:
        def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
            calls.append(("shape", name, lo, opt, hi))

    class TimingCache:
        def serialize(self) -> bytes:
            return b"timing cache"

    class BuilderConfig:
        def __init__(self) -> None:
            self.flags: set[int] = set()
            self.progress_monitor = None
            self.profiles = 0

        def add_optimization_profile(self, profile: OptimizationProfile) -> int:
            self.profiles += 1
            return self.profiles - 1

        def set_flag(self, flag: int) -> None:
            self.flags.add(flag)

        def create_timing_cache(self, data: bytes) -> TimingCache:
            return TimingCache()

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            return True

        def get_timing_cache(self) -> TimingCache:
            return TimingCache()

    class Builder:
        def __init__(self, logger: ILogger) -> None:
            pass

        def create_network(self, flags: int) -> Network:
            calls.append(("network flags", flags))
            return Network()

        def create_builder_config(self) -> BuilderConfig:
            return BuilderConfig()

        def create_optimization_profile(self) -> OptimizationProfile:
            return OptimizationProfile()

        def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes:
            monitor = config.progress_monitor
            monitor.phase_start("build", None, 1)
            assert monitor.step_complete("build", 0)
            monitor.phase_finish("build")
            calls.append(("builder flags", frozenset(config.flags), config.profiles))
            return b"plan"

    trt.ILogger, trt.IProgressMonitor, trt.Builder, trt.OnnxParser = ILogger, IProgressMonitor, Builder, OnnxParser
    # 11.x numbering (FP16, INT8, … removed); STRONGLY_TYPED kept as an ignored flag, EXPLICIT_BATCH gone
    trt.BuilderFlag = enum(DEBUG=2, GPU_FALLBACK=3, REFIT=4, STRIP_PLAN=18, REFIT_IDENTICAL=19)
    trt.NetworkDefinitionCreationFlag = enum(**({"STRONGLY_TYPED": 0} if strongly_typed_flag else {}),
                                             PREFER_AOT_PYTHON_PLUGINS=1, PREFER_JIT_PYTHON_PLUGINS=2)
    trt.DataType = enum(FLOAT=0, HALF=1, INT32=3, BOOL=4, UINT8=5, INT64=8)
    return trt, calls


@pytest.fixture
def build(monkeypatch, tmp_path):
    """Build with the "tensorrt" backend on a fake module, as if on a GPU of compute capability 8.9."""
    monkeypatch.setattr(trt10, "gpu_capability", lambda: "8.9")

    def run(trt: types.ModuleType, **options):
        monkeypatch.setattr(trt10.Backend, "module", lambda self: trt)
        engine = tmp_path / "e.engine"
        report = get_backend("tensorrt").build(tmp_path / "unet.onnx", engine, [PROFILE], cache_dir=tmp_path,
                                              **options)
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
