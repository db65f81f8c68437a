"""The extension's state inside one WebUI process: engine store, build queue, dropdown options, runtime.

Everything the tab, the API, the provider and the job check share goes through the one :data:`EXT`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from modules import call_queue, devices, sd_unet, shared

from trt_lib.backends import get_backend
from trt_lib.backends.trt10 import gpu_capability
from trt_lib.errors import BackendUnavailableError, TrtError
from trt_lib.families import Family, get_family
from trt_lib.jobs import Job, JobQueue
from trt_lib.pipeline import BuildRequest, build_stage, export_stage
from trt_lib.profiles import Profile
from trt_lib.runtime import EngineRunner
from trt_lib.store import EngineEntry, EngineStore, Problem, Runtime
from trt_lib.unet_session import UnetSession

from . import loaded_model, lora_bake, prompt_loras, settings
from .provider import OptionCache

RunnerFactory = Callable[[EngineStore, EngineEntry], EngineRunner]


def backend_runner(store: EngineStore, entry: EngineEntry) -> EngineRunner:
    """Load ``entry`` with the backend that built it (the real TensorRT runtime)."""
    family = get_family(entry.family)
    names, profiles = entry.engine_inputs(family)
    return get_backend(entry.backend).load_runner(
        store.engine_path(entry), names, family.output_name, profiles, onnx_path=store.onnx_path(entry))


@dataclass(frozen=True)
class EngineListing:
    """The engine store read once for a list in the tab or the API."""

    entries: list[EngineEntry]
    problems: dict[str, str]
    """Why each unusable engine cannot be used, by id: entries, malformed entries and stray engine files."""
    status: dict[str, str]
    """Per entry, "" when it can run here, else why not: its problem, or no CUDA GPU on this machine
    (engines built for another one are kept)."""


class Extension:
    """Shared state; ``runner_factory`` is swapped by tests for the ONNX Runtime stand-in."""

    def __init__(self) -> None:
        self.jobs = JobQueue()
        self.options = OptionCache(self.open_session)
        self.runner_factory: RunnerFactory = backend_runner
        self._store: EngineStore | None = None
        self._runtime: Runtime | None = None
        self.discarded: list[str] = []

    # -- store and runtime ---------------------------------------------------------------------------

    @property
    def store(self) -> EngineStore:
        folder = settings.engine_dir()
        if self._store is None or self._store.folder != folder:
            self._store = EngineStore(folder)
            self.discarded = self._store.cleanup()
            if self.discarded:
                print(f"[TensorRT] removed unfinished files of an interrupted build: {', '.join(self.discarded)}")
        return self._store

    def runtime(self) -> Runtime | None:
        """The backend and GPU engines must match; None when the backend cannot be loaded here."""
        try:
            backend = get_backend(settings.backend())
            return Runtime(backend.name, backend.version(), gpu_capability())
        except BackendUnavailableError:
            return None

    def backend_problem(self) -> str:
        """Why the selected backend cannot be used here, with the fix; "" when it can."""
        try:
            get_backend(settings.backend()).version()
        except BackendUnavailableError as e:
            return str(e)
        return ""

    def engines_for(self, checkpoint: str, family: Family | None = None, lora_label: str = "") -> list[EngineEntry]:
        """Usable engines of ``checkpoint`` (optionally of one family) with these baked LoRAs (none by default),
        for the selected backend and GPU."""
        runtime = self.runtime()
        if runtime is None:
            return []
        return [e for e in self.store.usable(runtime) if e.checkpoint == checkpoint
                and (family is None or e.family == family.name) and e.lora_label == lora_label]

    def problems(self) -> list[Problem]:
        return self.store.problems(self.runtime())

    def listing(self) -> EngineListing:
        """The engines with their problems and whether they run here, as the tab and the API list them."""
        entries = self.store.entries()
        problems = {p.entry_id: p.reason for p in self.problems()}
        no_gpu = "" if gpu_capability() else "no CUDA GPU here to run it (it runs on the GPU it was built for)"
        return EngineListing(entries, problems, {e.id: problems.get(e.id, no_gpu) for e in entries})

    # -- sd_unet --------------------------------------------------------------------------------------

    def list_unets(self, unet_list: list) -> None:
        """on_list_unets callback: an option for each checkpoint that has a usable engine, and one for each set
        of LoRAs baked into engines of it; the plain one first, so that "Automatic" picks it."""
        try:
            runtime = self.runtime()
            entries = self.store.usable(runtime) if runtime else []
        except TrtError as e:
            print(f"[TensorRT] engine list unavailable: {e}")
            return
        unet_list.extend(self.options.options(sorted({(e.checkpoint, e.lora_label) for e in entries})))

    def refresh_unets(self) -> None:
        sd_unet.list_unets()

    def open_session(self, checkpoint: str, lora_label: str = "") -> UnetSession:
        """The engines of one dropdown option. Prompt LoRAs are refitted into plain engines only: engines with
        baked LoRAs keep theirs (see :func:`prompt_loras.before_sampling`)."""
        entries = self.engines_for(checkpoint, lora_label=lora_label)
        if not entries:
            reasons = "; ".join(p.reason for p in self.problems()) or "build one in the TensorRT tab"
            raise TrtError(f"no usable engine for {checkpoint}: {reasons}")
        family = get_family(entries[0].family)
        store = self.store
        return UnetSession(entries, family, checkpoint, lambda entry: self.runner_factory(store, entry),
                           loras=None if lora_label else prompt_loras.refitter(store))

    # -- builds ---------------------------------------------------------------------------------------

    def submit_build(self, profiles: list[Profile], loras: list[dict] | None = None, refit: bool = False,
                     controlnet: bool = False) -> Job:
        """Queue an engine build for the loaded checkpoint; bad input is refused before anything is queued."""
        model = loaded_model.current()
        request = BuildRequest(model.checkpoint, model.hash, model.family, profiles, backend=settings.backend(),
                               compute_capability=settings.compute_capability(),
                               loras=lora_bake.check_loras(loras or []), refit=refit, dtype=devices.dtype_unet,
                               controlnet=controlnet)
        request.validate()
        get_backend(request.backend).version()  # refuse now, with the fix, if the backend is missing
        store = self.store

        def run(job: Job) -> EngineEntry:
            with call_queue.queue_lock:  # the export uses the loaded UNet: never beside a generation
                if loaded_model.checkpoint_name() != model.checkpoint:
                    raise TrtError(f"the checkpoint changed to {loaded_model.checkpoint_name()} before the build "
                                   f"of {model.checkpoint} started; build again")
                with loaded_model.pytorch_unet() as unet, \
                        lora_bake.baked(unet, request.loras) if request.loras else contextlib.nullcontext():
                    onnx_path = export_stage(unet, request, store, progress=job.report, cancel=job.cancel,
                                             device=next(unet.parameters()).device)
            gpu = get_backend(request.backend).needs_gpu_to_build(request.refit)
            with call_queue.queue_lock if gpu else contextlib.nullcontext():
                entry = build_stage(onnx_path, request, store, progress=job.report, cancel=job.cancel)
            self.refresh_unets()
            return entry

        return self.jobs.submit(f"{model.checkpoint}: " + "; ".join(p.label() for p in profiles), run)

    def delete(self, engine_id: str) -> EngineEntry:
        """Delete an engine; one in use is unloaded first (the PyTorch UNet takes over)."""
        entry = self.store.get(engine_id)
        option = sd_unet.current_unet_option
        if option is not None and getattr(option, "checkpoint", None) == entry.checkpoint:
            sd_unet.apply_unet("None")
        removed = self.store.remove(engine_id)
        self.refresh_unets()
        if option is not None and shared.sd_model is not None:
            sd_unet.apply_unet()
        return removed


EXT = Extension()

