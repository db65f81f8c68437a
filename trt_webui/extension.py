"""The extension's state inside one WebUI process: engine store, build queue, dropdown options, runtime.

Everything the tab, the API, the provider and the job check share goes through the one :data:`EXT`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass

from modules import call_queue, devices, sd_unet, shared

from trt_lib.backends import get_backend
from trt_lib.backends.trt10 import gpu_capability
from trt_lib.engines.onnx_runtime import reference_runner
from trt_lib.engines.runtime import EngineRunner
from trt_lib.engines.unet_session import UnetSession
from trt_lib.errors import BackendUnavailableError, TrtError
from trt_lib.jobs.job_queue import Job, JobQueue
from trt_lib.jobs.pipeline import BuildRequest, build_stage, export_stage
from trt_lib.model.families import Family, get_family
from trt_lib.model.profiles import Profile
from trt_lib.store.engine_store import EngineEntry, EngineStore, Problem, Runtime, checkpoint_changed

from . import loaded_model, lora_bake, prompt_loras, reference_runtime, settings
from .provider import LABEL_PREFIX, CheckpointMismatchError, OptionCache

RunnerFactory = Callable[[EngineStore, EngineEntry], EngineRunner]


def backend_runner(store: EngineStore, entry: EngineEntry) -> EngineRunner:
    """Load ``entry`` with the backend that built it (the real TensorRT runtime)."""
    family = get_family(entry.family)
    names, profiles = entry.engine_inputs(family)
    return get_backend(entry.backend).load_runner(
        store.engine_path(entry), names, family.output_name, profiles, onnx_path=store.onnx_path(entry))


def selected_runner(store: EngineStore, entry: EngineEntry) -> EngineRunner:
    """Load ``entry`` with what "Run engines with" names: its backend, or ONNX Runtime on its ONNX export."""
    return (reference_runner if reference_runtime.selected() else backend_runner)(store, entry)


@dataclass(frozen=True)
class EngineListing:
    """The engine store read once for a list in the tab or the API."""

    entries: list[EngineEntry]
    problems: dict[str, str]
    """Why each unusable engine cannot be used, by id: entries, malformed entries and stray engine files."""
    status: dict[str, str]
    """Per entry, "" when it can run here, else why not: its problem, or no CUDA GPU on this machine
    (engines built for another one are kept)."""
    replaced: frozenset[str] = frozenset()
    """Entries not used because their checkpoint changed since the build (other weights, another family)."""


class Extension:
    """Shared state; ``runner_factory`` picks the runtime (tests swap it)."""

    def __init__(self) -> None:
        self.jobs = JobQueue()
        self.options = OptionCache(self.open_session)
        self.runner_factory: RunnerFactory = selected_runner
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
        """What engines must match to run here: the backend and GPU, or under the reference runtime only their
        ONNX export; None when the backend (or ONNX Runtime) cannot be loaded here."""
        if reference_runtime.selected():
            return reference_runtime.runtime()
        return self.backend_runtime()

    def backend_runtime(self) -> Runtime | None:
        """The selected backend's version and this GPU; None when the backend cannot be loaded here."""
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

    def listing(self) -> EngineListing:
        """The one decision whether an engine is offered, used by the dropdown, "Automatic", jobs, the fit
        check and the engine lists: the store's entries, and why each one not offered is not (files, backend,
        GPU, or a checkpoint replaced since: other weights or another family under its name)."""
        runtime = self.runtime()
        hash_of = functools.lru_cache(maxsize=None)(loaded_model.known_sha256)
        entries, problems = self.store.review(runtime, hash_of)
        reasons = {p.entry_id: p.reason for p in problems}
        replaced = {e.id for e in entries if checkpoint_changed(e, hash_of(e.checkpoint))}
        loaded = self._loaded_family()
        for e in entries:
            if loaded is not None and e.checkpoint == loaded[0] and e.family != loaded[1].name:
                reasons[e.id] = (f"built for {get_family(e.family).label}, but the loaded {e.checkpoint} is "
                                 f"{loaded[1].label} (another checkpoint under its name): never used for it. Rebuild "
                                 f"it ({e.build_label()}) with Rebuild in the TensorRT tab")
                replaced.add(e.id)
        if runtime is None:
            missing = f"the selected backend cannot be loaded here: {self.backend_problem()}"
            reasons = {**{e.id: missing for e in entries}, **reasons}
        no_gpu = "" if gpu_capability() or reference_runtime.selected() else \
            "no CUDA GPU here to run it (it runs on the GPU it was built for)"
        return EngineListing(entries, reasons, {e.id: reasons.get(e.id, no_gpu) for e in entries},
                             frozenset(replaced))

    @staticmethod
    def _loaded_family() -> tuple[str, Family] | None:
        if loaded_model.peek() is None:
            return None
        try:
            model = loaded_model.current()
        except TrtError:
            return None
        return model.checkpoint, model.family

    def engines_for(self, checkpoint: str, family: Family | None = None, lora_label: str = "",
                    listing: EngineListing | None = None) -> list[EngineEntry]:
        """Offered engines of ``checkpoint`` (optionally of one family) with these baked LoRAs (none by default),
        from ``listing`` when the caller has read one."""
        listing = listing or self.listing()
        return [e for e in listing.entries if e.id not in listing.problems and e.checkpoint == checkpoint
                and (family is None or e.family == family.name) and e.lora_label == lora_label]

    def problems(self) -> list[Problem]:
        return [Problem(k, v) for k, v in self.listing().problems.items()]

    # -- sd_unet --------------------------------------------------------------------------------------

    def list_unets(self, unet_list: list) -> None:
        """on_list_unets callback: an option for each checkpoint that has a usable engine, and one for each set
        of LoRAs baked into engines of it; the plain one first, so that "Automatic" picks it. A checkpoint
        whose engines were all built from another version of it keeps its option, so that a job naming it
        gets the reason, but "Automatic" never picks it."""
        try:
            listing = self.listing()
        except TrtError as e:
            print(f"[TensorRT] engine list unavailable: {e}")
            return
        offered = {(e.checkpoint, e.lora_label) for e in listing.entries if e.id not in listing.problems}
        replaced = {(e.checkpoint, e.lora_label) for e in listing.entries if e.id in listing.replaced}
        prefix = reference_runtime.PREFIX if reference_runtime.selected() else LABEL_PREFIX
        unet_list.extend(self.options.options(sorted(offered | replaced), prefix, automatic=offered))

    def refresh_unets(self) -> None:
        sd_unet.list_unets()

    def open_session(self, checkpoint: str, lora_label: str = "") -> UnetSession:
        """The engines of one dropdown option. Prompt LoRAs are refitted into plain engines only: engines with
        baked LoRAs keep theirs (see :func:`prompt_loras.before_sampling`)."""
        entries = self.engines_for(checkpoint, lora_label=lora_label)
        if not entries:
            raise self._none_offered(checkpoint, lora_label)
        family = get_family(entries[0].family)
        store = self.store
        if reference_runtime.selected():
            print(f"[TensorRT] {checkpoint}: engines run on ONNX Runtime (reference), to check them, not for speed")
        return UnetSession(entries, family, checkpoint, lambda entry: self.runner_factory(store, entry),
                           loras=None if lora_label else prompt_loras.refitter(store))

    def _none_offered(self, checkpoint: str, lora_label: str) -> TrtError:
        """Why no engine of this option is offered: the checkpoint-mismatch error when the checkpoint was
        replaced since its engines were built, else the reasons of its own engines."""
        listing = self.listing()
        own = [e for e in listing.entries if e.checkpoint == checkpoint and e.lora_label == lora_label]
        stale = [e for e in own if e.id in listing.replaced]
        if stale:
            return CheckpointMismatchError(
                f"the engines of {checkpoint} are not used: "
                + "; ".join(f"{e.id} {listing.problems[e.id]}" for e in stale)
                + ". Choose 'Automatic' or 'None' for SD Unet until then, or set the TensorRT fallback setting.")
        why = "; ".join(f"{e.id}: {listing.problems[e.id]}" for e in own if e.id in listing.problems)
        return TrtError(f"no usable engine for {checkpoint}: {why or 'build one in the TensorRT tab'}")

    # -- builds ---------------------------------------------------------------------------------------

    def submit_build(self, profiles: list[Profile], loras: list[dict] | None = None, refit: bool = False,
                     controlnet: bool = False, replaces: str = "") -> Job:
        """Queue an engine build for the loaded checkpoint; bad input is refused before anything is queued.
        ``replaces``: an engine deleted once this one is built (Rebuild)."""
        model = loaded_model.current()
        self.store.check_readable()
        request = BuildRequest(model.checkpoint, model.hash, model.family, profiles, backend=settings.backend(),
                               compute_capability=settings.compute_capability(),
                               loras=lora_bake.check_loras(loras or []), refit=refit, dtype=devices.dtype_unet,
                               controlnet=controlnet)
        request.validate()
        get_backend(request.backend).check_build(request.compute_capability, request.refit)  # refused now, not late
        store = self.store

        def run(job: Job) -> EngineEntry:
            with call_queue.queue_lock:  # the export uses the loaded UNet: never beside a generation
                if loaded_model.checkpoint_name() != model.checkpoint:
                    raise TrtError(f"the checkpoint changed to {loaded_model.checkpoint_name()} before the build "
                                   f"of {model.checkpoint} started; build again")
                with loaded_model.pytorch_unet() as unet, lora_bake.exported(unet, request.loras):
                    onnx_path = export_stage(unet, request, store, progress=job.report, cancel=job.cancel,
                                             device=next(unet.parameters()).device)
            gpu = get_backend(request.backend).needs_gpu_to_build(request.refit)
            with call_queue.queue_lock if gpu else contextlib.nullcontext():
                entry = build_stage(onnx_path, request, store, progress=job.report, cancel=job.cancel)
            if replaces:
                store.remove(replaces)
            self.refresh_unets()
            return entry

        return self.jobs.submit(f"{model.checkpoint}: " + "; ".join(p.label() for p in profiles), run)

    def rebuild(self, engine_id: str) -> Job:
        """Build an engine again with its profiles, LoRAs, refit and ControlNet choices from the loaded checkpoint
        (replaced since, or for this backend and GPU); the old one is deleted once the new one is built."""
        entry = self.store.get(engine_id)
        loaded = loaded_model.checkpoint_name()
        if loaded != entry.checkpoint:
            raise TrtError(f"{engine_id} is an engine of {entry.checkpoint}, but {loaded} is loaded: load "
                           f"{entry.checkpoint} first (a rebuild exports the loaded checkpoint)")
        return self.submit_build(entry.parsed_profiles, entry.loras, entry.refittable, entry.controlnet,
                                 replaces=entry.id)

    def adopt_file(self, name: str) -> EngineEntry:
        """Record an engine file the manifest lost again, from its record beside it."""
        entry = self.store.adopt(name)
        self.refresh_unets()
        return entry

    def delete_file(self, name: str) -> str:
        """Delete an engine file the manifest does not know (and its record)."""
        return self.store.remove_file(name)

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

