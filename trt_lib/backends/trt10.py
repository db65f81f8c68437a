"""ONNX → engine with the TensorRT 10 API, one implementation for TensorRT (10 and 11) and TensorRT for RTX.

TensorRT 11 dropped weak typing and implicit-batch names and renumbered enums: every call here exists in
both, and flags are read by name. TensorRT for RTX keeps TensorRT 10's Python API, so a :class:`Backend`
differs only in its module name and in what that module offers (a target compute capability, a timing
cache, a runtime config).

polygraphy is not used for building: it picks ``tensorrt`` or ``tensorrt_rtx`` once per process from
``POLYGRAPHY_USE_TENSORRT_RTX`` at import, while the WebUI switches backends between builds from settings;
the dozen TensorRT calls below are all its loaders would do here.
"""

from __future__ import annotations

import functools
import importlib
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..errors import BackendUnavailableError, BuildCancelled, BuildError, BuildTargetError
from ..install_plan import cuda_flavour, requirements
from ..store.engine_store import atomic_write_bytes

if TYPE_CHECKING:
    from ..engines.runtime import EngineProfile
    from .tensorrt_runtime import TensorRTRunner

Progress = Callable[[str, float], None]
"""Called with a stage description and the fraction of the build done (0..1, never decreasing)."""

BUILD_START, BUILD_END = 0.05, 0.95
"""Share of the progress bar before (parsing) and after (writing) TensorRT's own build phases."""


@dataclass(frozen=True)
class BuildReport:
    """What a build produced, as the manifest records it."""

    backend: str
    backend_version: str
    compute_capabilities: tuple[str, ...]
    seconds: float
    engine_bytes: int
    refittable: bool
    weight_stripped: bool
    phases: tuple[tuple[str, float], ...] = ()
    """Seconds per step of the build, in order: parsing, TensorRT's top-level phases, writing."""

    def summary(self) -> str:
        """"built in 23.4 s, most of it in Building engine (21.0 s)": what a user waits for."""
        slowest = max(self.phases, key=lambda p: p[1], default=None)
        where = f", most of it in {slowest[0]} ({slowest[1]:.1f} s)" if slowest else ""
        return f"built in {self.seconds:.1f} s{where}"


@dataclass(frozen=True)
class Backend:
    """One TensorRT flavour: how to import it, and what its module offers."""

    name: str
    label: str
    module_name: str
    min_major: int
    targets_compute_capability: bool
    """Builds for a chosen compute capability (TensorRT for RTX); otherwise for the GPU it runs on."""
    timing_cache: bool
    """Has a build-time timing cache worth keeping between builds."""
    runtime_config: bool
    """Has ``IRuntimeConfig``: a runtime kernel cache and built-in CUDA graphs for execution contexts."""

    # -- the module ------------------------------------------------------------------------------------------

    def install_hint(self) -> str:
        engine = requirements(self.name, cuda_flavour())[-1]
        return (f"Install it from the TensorRT tab's install hint, or in the WebUI's Python run "
                f"`python -m pip {engine.pip}`, then restart the WebUI.")

    def module(self) -> ModuleType:
        """The imported module; :class:`BackendUnavailableError` with the fix when it is missing or broken."""
        try:
            trt = importlib.import_module(self.module_name)
        except Exception as e:  # ImportError, or OSError when a CUDA library or the driver is missing
            raise BackendUnavailableError(
                f"{self.label} cannot be loaded ({type(e).__name__}: {e}). {self.install_hint()}") from e
        version = str(getattr(trt, "__version__", "0"))
        if int(version.split(".")[0]) < self.min_major:
            raise BackendUnavailableError(f"{self.label} {version} is too old; {self.min_major} or newer is needed. "
                                          f"{self.install_hint()}")
        return trt

    def version(self) -> str:
        return str(self.module().__version__)

    def build_target(self, requested: str | None) -> str:
        """The compute capability a build for ``requested`` targets; :class:`BuildTargetError` naming the setting
        that fixes it when there is none (no GPU and no target chosen), so that a build is refused before its
        export rather than failing after it."""
        return self._target(self.module(), requested)[0]

    def needs_gpu_to_build(self, refit: bool) -> bool:
        """Whether a build occupies the GPU: TensorRT tunes kernels on the GPU it runs on, TensorRT for RTX
        compiles ahead of time on the CPU, except refittable or weight-stripped plans (1.7.1 needs CUDA for
        those). Builds that do not need it leave the GPU, and the loaded model's VRAM, to generations."""
        return not self.targets_compute_capability or refit

    # -- building --------------------------------------------------------------------------------------------

    def build(self, onnx_path: Path, engine_path: Path, profiles: Sequence[EngineProfile], *,
              compute_capability: str | None = None, refit: bool = False, strip_weights: bool = False,
              progress: Progress | None = None, cancel: threading.Event | None = None,
              cache_dir: Path | None = None) -> BuildReport:
        """Build ``onnx_path`` into ``engine_path`` with one optimisation profile per entry of ``profiles``.

        ``refit`` makes the engine's weights replaceable (LoRA switching); ``strip_weights`` leaves them out of
        the plan, to be refitted from the ONNX at load. The engine file appears only once complete; a cancel
        (:class:`BuildCancelled`) or failure (:class:`BuildError`) leaves nothing behind.

        The build runs in a child process (:mod:`.build_process`) that a cancel kills wherever it is: TensorRT
        stops only between the steps its progress monitor reports, and TensorRT for RTX 1.7.1 spends most of
        a build in one step.
        """
        from .build_process import build_in_child

        self._check_release(self.module(), refit)
        if not profiles:
            raise BuildError("at least one optimisation profile is needed")
        target = self.build_target(compute_capability)  # refused here, before a process is started
        return build_in_child(self, Path(onnx_path), Path(engine_path), profiles, target=target, refit=refit,
                              strip_weights=strip_weights, progress=progress or (lambda stage, fraction: None),
                              cancel=cancel or threading.Event(), cache_dir=cache_dir)

    def build_here(self, onnx_path: Path, engine_path: Path, profiles: Sequence[EngineProfile], *, target: str,
                   refit: bool, strip_weights: bool, progress: Progress, cache_dir: Path | None,
                   cancel: threading.Event | None = None) -> BuildReport:
        """:meth:`build` in this process, for the ``target`` :meth:`build_target` gave; run by the child."""
        trt = self.module()
        report = progress
        cancel = cancel or threading.Event()
        target_enum = self._supported(trt)[target] if self.targets_compute_capability else None
        started = time.perf_counter()

        report(f"parsing {onnx_path.name}", 0.0)
        phases: list[tuple[str, float]] = []
        mark = started

        def timed(step: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            phases.append((step, now - mark))
            mark = now

        logger = logger_class(trt)(self.label)
        builder = trt.Builder(logger)
        network = builder.create_network(network_flags(trt))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):  # by path, so external weight files beside it are read
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "; ".join(logger.errors)
            raise BuildError(f"{self.label} cannot read {onnx_path.name}: {errors}")
        BuildCancelled.check(cancel)

        config = builder.create_builder_config()
        inputs = {network.get_input(i).name for i in range(network.num_inputs)}
        for index, profile in enumerate(profiles):
            if set(profile) != inputs:
                raise BuildError(f"profile {index + 1} gives shapes for {', '.join(sorted(profile))}, but "
                                 f"{onnx_path.name} has inputs {', '.join(sorted(inputs))}")
            opt = builder.create_optimization_profile()
            for name, (lo, mid, hi) in profile.items():
                opt.set_shape(name, lo, mid, hi)
            config.add_optimization_profile(opt)
        if target_enum is not None:
            config.num_compute_capabilities = 1
            config.set_compute_capability(target_enum, 0)
        if refit:
            config.set_flag(trt.BuilderFlag.REFIT)
        if strip_weights:
            config.set_flag(trt.BuilderFlag.STRIP_PLAN)
            if not refit:  # weights stay as exported: TensorRT may then optimise them as constants
                config.set_flag(trt.BuilderFlag.REFIT_IDENTICAL)
        monitor = monitor_class(trt)(
            lambda stage, f: report(f"building: {stage}", BUILD_START + f * (BUILD_END - BUILD_START)), cancel)
        config.progress_monitor = monitor
        cache_path = Path(cache_dir) / f"{self.name}-timing.cache" if self.timing_cache and cache_dir else None
        if cache_path is not None:
            cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
            if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
                # damaged, or made on another GPU or version: start a new one, which replaces it on disk
                config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

        timed("parsing the ONNX")
        report("building the engine", BUILD_START)
        plan = builder.build_serialized_network(network, config)
        if monitor.seconds:  # TensorRT's own top-level phases, where it reports them
            phases.extend(monitor.seconds)
            mark = time.perf_counter()
        else:
            timed("building the engine")
        if monitor.error is not None:
            raise monitor.error
        if plan is None:
            BuildCancelled.check(cancel)
            raise BuildError(self._failure(logger.errors, refit or strip_weights))
        if cache_path is not None:
            atomic_write_bytes(cache_path, config.get_timing_cache().serialize())
        report("writing the engine", BUILD_END)
        try:
            atomic_write_bytes(engine_path, plan)
        except OSError as e:  # disk full, permission denied: nothing was written (atomic_write_bytes cleans up)
            raise BuildError(f"could not write {engine_path.name} into {engine_path.parent}: {e.strerror or e}. "
                             "Free some disk space or choose another engine folder in Settings → TensorRT.") from e
        timed("writing the engine")
        built = BuildReport(backend=self.name, backend_version=str(trt.__version__), compute_capabilities=(target,),
                            seconds=time.perf_counter() - started, engine_bytes=engine_path.stat().st_size,
                            refittable=refit, weight_stripped=strip_weights, phases=tuple(phases))
        report(f"engine {built.summary()}", 1.0)
        return built

    def check_build(self, compute_capability: str | None, refit: bool) -> str:
        """Refuse, before any export, a build this backend cannot do here (:class:`BuildTargetError` with the
        fix): its module missing or broken, no target to build for (no GPU, none chosen), a release whose
        refittable engines are documented to compute wrong results, or refit where it needs a GPU that is not
        there. The compute capability the build targets otherwise."""
        target = self.build_target(compute_capability)
        self._check_release(self.module(), refit)
        problem = self.refit_build_problem() if refit else ""
        if problem:
            raise BuildTargetError(problem)
        return target

    def _check_release(self, trt: ModuleType, refit: bool) -> None:
        """Refuse refittable builds with a TensorRT release documented to compute them wrongly."""
        version = str(trt.__version__)
        if refit and self.name == "tensorrt" and version.split(".")[:2] in BAD_REFIT_RELEASES:
            raise BuildTargetError(
                f"{self.label} {version} can build refittable engines that compute wrong results (its release "
                "notes: BuilderFlag.REFIT \"may produce incorrect numerical output\", a GEMM bias can be "
                "dropped). Build without \"Switch prompt LoRAs without a rebuild\", or install another "
                f"release in the WebUI's Python: python -m pip {requirements(self.name, cuda_flavour())[-1].pip}, "
                "then restart the WebUI.")

    def _target(self, trt: ModuleType, requested: str | None) -> tuple[str, Any]:
        """The compute capability to build for ("8.9") and the module's enum for it (None: the GPU it runs on)."""
        current = gpu_capability()
        if not self.targets_compute_capability:
            if current is None:
                raise BuildTargetError(f"{self.label} builds engines for the GPU it runs on, and no CUDA GPU is "
                                       "visible here. Build on the machine that will run the engine, or choose "
                                       "TensorRT for RTX, which builds for a target chosen in Settings → TensorRT.")
            if requested and requested != current:
                raise BuildTargetError(f"{self.label} builds for the GPU it runs on (compute capability "
                                       f"{current}), not for {requested}; clear the target in Settings → TensorRT.")
            return current, None
        target = requested or current
        if target is None:
            raise BuildTargetError(f"no CUDA GPU is visible here to build for: set Settings → TensorRT → \"Build "
                                   f"for compute capability\" to that of the GPU that will run the engine "
                                   f"({', '.join(self._supported(trt))})")
        supported = self._supported(trt)
        if target not in supported:
            raise BuildTargetError(f"{self.label} {trt.__version__} cannot build for compute capability {target}; "
                                   f"it supports {', '.join(supported)}")
        return target, supported[target]

    @staticmethod
    def _supported(trt: ModuleType) -> dict[str, Any]:
        """The module's ``ComputeCapability.SM89``-style members as {"8.9": member}, oldest first."""
        found = [(int(m[2:-1]), int(m[-1]), getattr(trt.ComputeCapability, m))
                 for m in dir(trt.ComputeCapability) if re.fullmatch(r"SM\d{2,}", m)]
        return {f"{major}.{minor}": member for major, minor, member in sorted(found, key=lambda x: x[:2])}

    def refit_build_problem(self) -> str:
        """Why refittable or weight-stripped engines cannot be built here, what to do first; "" when they can.

        Measured with TensorRT for RTX 1.7.1: REFIT, REFIT_IDENTICAL, REFIT_INDIVIDUAL (with weights marked)
        and STRIP_PLAN all fail on a CPU-only machine with a Myelin CUDA_SUCCESS check, at the end of a build.
        """
        if not self.targets_compute_capability or gpu_capability() is not None:
            return ""
        return ("Build without \"Switch prompt LoRAs without a rebuild\" (refit) here, or build on the machine with "
                f"the GPU: refittable and weight-stripped engines need a CUDA GPU while building with {self.label}, "
                "and PyTorch sees none here")

    def _failure(self, errors: list[str], refittable: bool) -> str:
        hint = self.refit_build_problem() if refittable else ""
        message = f"{self.label} could not build the engine: {'; '.join(errors) or 'no reason given'}"
        return f"{hint}. {message}" if hint else message

    # -- running ---------------------------------------------------------------------------------------------

    def load_runner(self, engine_path: Path, input_names: Sequence[str], output_name: str,
                    profiles: Sequence[EngineProfile], onnx_path: Path | None = None, *,
                    cache_dir: Path | None = None) -> TensorRTRunner:
        """A runner for ``engine_path`` on the current CUDA GPU (:class:`EngineRunError` when there is none).

        ``onnx_path`` is the engine's own export: a refittable engine is refitted from it at load, which puts
        the weights into a weight-stripped plan. ``cache_dir`` keeps the runtime kernel cache where the module
        has one; by default the ``cache`` folder beside the engine, where builds keep theirs.
        """
        from .tensorrt_runtime import TensorRTRunner

        engine_path = Path(engine_path)
        return TensorRTRunner(self, engine_path, input_names, output_name, profiles, onnx_path=onnx_path,
                              cache_dir=Path(cache_dir) if cache_dir else engine_path.parent / "cache")


BAD_REFIT_RELEASES = (["11", "3"],)
"""TensorRT releases whose documentation warns that REFIT builds may compute wrong results (11.3;
REFIT_IDENTICAL is not affected). install_plan keeps them out of what install.py installs."""


def network_flags(trt: ModuleType) -> int:
    """``create_network``'s flags: strongly typed (the export fixes every dtype). TensorRT 10 needs the flag;
    11 is always strongly typed and keeps the flag only for compatibility (ignored), and removed
    EXPLICIT_BATCH and renumbered the enum, so the flag is read by name and left out where it is gone."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def gpu_capability() -> str | None:
    """The current CUDA GPU's compute capability ("8.9"), or None without one."""
    import torch  # here, so that a build's child process starts without it

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


class PhaseTracker:
    """Turns TensorRT's nested build phases into one fraction that never decreases.

    A phase's fraction is (completed steps + the fraction of its running child) / its step count; the top
    phases' fraction is the build's. TensorRT may call from several threads, hence the lock.
    """

    def __init__(self, report: Progress, cancel: threading.Event) -> None:
        self._report = report
        self._cancel = cancel
        self._lock = threading.Lock()
        self._phases: dict[str, list[Any]] = {}  # name -> [parent, steps, steps done]
        self._started: dict[str, float] = {}
        self._best = 0.0
        self.seconds: list[tuple[str, float]] = []
        """(name, seconds) of each finished top-level phase: where the build's time went."""
        self.error: BaseException | None = None
        """What ``report`` raised: kept and re-raised after the build, as it cannot cross TensorRT's C++."""

    def _fraction(self, name: str) -> float:
        _, steps, done = self._phases[name]
        child = max((self._fraction(n) for n, p in self._phases.items() if p[0] == name), default=0.0)
        return min(1.0, (done + child) / steps)

    def _update(self, stage: str) -> None:
        tops = [n for n, p in self._phases.items() if p[0] is None or p[0] not in self._phases]
        if tops:
            self._best = max(self._best, min(self._fraction(n) for n in tops))
        try:
            self._report(stage, self._best)
        except BaseException as e:  # noqa: B036 - re-raised by Backend.build once TensorRT has stopped
            self.error = self.error or e

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        with self._lock:
            self._phases[phase_name] = [parent_phase, max(num_steps, 1), 0]
            if parent_phase is None:
                self._started[phase_name] = time.perf_counter()
            self._update(phase_name)

    def step_complete(self, phase_name: str, step: int) -> bool:
        """False asks TensorRT to stop the build: that is how a cancel ends it."""
        with self._lock:
            if phase_name in self._phases:
                self._phases[phase_name][2] = max(self._phases[phase_name][2], step + 1)
                self._update(phase_name)
        return not self._cancel.is_set() and self.error is None

    def phase_finish(self, phase_name: str) -> None:
        with self._lock:
            phase = self._phases.get(phase_name)
            if phase is not None:
                phase[2] = phase[1]
                self._update(phase_name)
                del self._phases[phase_name]
            if phase_name in self._started:
                self.seconds.append((phase_name, time.perf_counter() - self._started.pop(phase_name)))


@functools.cache
def logger_class(trt: ModuleType) -> Any:
    """A subclass of ``trt.ILogger`` (made per module, on first use, as the module is imported lazily)."""

    class Logger(trt.ILogger):
        """Keeps errors for the exception message; prints warnings and errors like TensorRT's own logger."""

        def __init__(self, label: str) -> None:
            trt.ILogger.__init__(self)
            self.label = label
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(trt.ILogger.ERROR):
                self.errors.append(msg)
            if int(severity) <= int(trt.ILogger.WARNING):
                print(f"[{self.label}] {msg}", file=sys.stderr)

    return Logger


@functools.cache
def monitor_class(trt: ModuleType) -> Any:
    """A subclass of ``trt.IProgressMonitor`` driving a :class:`PhaseTracker`."""

    class Monitor(PhaseTracker, trt.IProgressMonitor):
        def __init__(self, report: Progress, cancel: threading.Event) -> None:
            trt.IProgressMonitor.__init__(self)
            PhaseTracker.__init__(self, report, cancel)

    return Monitor
