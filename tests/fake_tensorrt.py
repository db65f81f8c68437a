"""A stand-in ``tensorrt`` module with only TensorRT 11's Python names (11.4 API reference and its 10.x→11.x
migration guide): EXPLICIT_BATCH, the FP16/INT8/… builder flags and weak typing are gone, the enums are
renumbered, and STRONGLY_TYPED is kept as an ignored flag. It records what the build code asks of it."""

from __future__ import annotations

import types

INPUTS = ("sample", "timesteps")


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
