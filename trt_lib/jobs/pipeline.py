"""Export a UNet and build an engine for it into a store: the one entry point the tab, the API and the demo
use, so that they validate, name, cancel and record engines the same way."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..backends import get_backend
from ..errors import BuildCancelled, FamilyError, ProfileError
from ..export.onnx_export import ExportReport, export_onnx, residual_inputs
from ..model.families import Family
from ..model.profiles import Profile
from ..store.engine_store import EngineEntry, EngineStore
from ..store.names import file_stem

Progress = Callable[[str, float], None]
"""Called with a stage description and the overall fraction done (0..1)."""

EXPORT_FORMAT = 2
"""Part of every export's name. 2: exports hold exactly the checkpoint's weights plus the baked LoRAs; those of
earlier versions could hold the LoRAs of the last PyTorch job, so they are never reused."""

EXPORT_SHARE = 0.3
"""Part of the progress bar given to the export; the build takes the rest."""


@dataclass
class BuildRequest:
    """What to build: for which checkpoint, family, profiles, backend and target GPU, with which LoRAs."""

    checkpoint: str
    checkpoint_hash: str
    family: Family
    profiles: Sequence[Profile]
    backend: str = "tensorrt"
    compute_capability: str | None = None
    loras: list[dict[str, Any]] = field(default_factory=list)
    refit: bool = False
    dtype: torch.dtype = torch.float16
    controlnet: bool = False
    """ControlNet-ready: one extra input per ControlNet residual."""

    def validate(self) -> None:
        """Refuse bad profiles before any work starts (all problems named at once)."""
        if not self.profiles:
            raise ProfileError("at least one profile is needed")
        if self.controlnet and not self.family.controlnet_points:
            raise FamilyError(f"{self.family.label} engines cannot take ControlNet: "
                              f"{self.family.controlnet_unsupported}")
        problems = [f"profile {i + 1}: {p}" for i, prof in enumerate(self.profiles) for p in prof.problems(self.family)]
        if problems:
            raise ProfileError("invalid profile: " + "; ".join(problems))

    def export_key(self) -> str:
        """Names the ONNX export by the weights it holds: one per checkpoint (its hash), LoRA set and dtype,
        shared by all its engines."""
        lora = json.dumps(self.loras, sort_keys=True)
        key = f"{self.checkpoint_hash}|{lora}|{self.dtype}|{EXPORT_FORMAT}" + ("|controlnet" if self.controlnet else "")
        digest = hashlib.sha256(key.encode()).hexdigest()[:10]
        return f"{file_stem(self.checkpoint)}-{digest}"


def onnx_path_for(store: EngineStore, request: BuildRequest) -> Path:
    return store.folder / "onnx" / request.export_key() / "unet.onnx"


def graph_cache_folder(store: EngineStore) -> Path:
    """Where exports keep traced graphs for later checkpoints of the same kind (:mod:`trt_lib.export.graph_cache`)."""
    return store.folder / "cache" / "graphs"


def export_stage(unet: torch.nn.Module, request: BuildRequest, store: EngineStore, *,
                 progress: Progress | None = None, cancel: threading.Event | None = None,
                 device: torch.device | str | None = None) -> Path:
    """Export ``unet`` for ``request`` (or reuse the earlier export of the same weights); the ONNX path.

    The only stage that needs the loaded UNet (and its GPU): callers hold the WebUI's queue lock for it alone.
    """
    request.validate()
    store.check_readable()  # an engine the manifest cannot record would be left behind, unlisted

    def report_progress(stage: str, fraction: float) -> None:  # "export: …", beside the backend's build stages
        if progress is not None:
            progress(f"export: {stage}", fraction)

    onnx_path = onnx_path_for(store, request)
    if onnx_path.is_file():
        report_progress("reusing the earlier ONNX export", EXPORT_SHARE)
        return onnx_path
    report_progress("exporting the UNet to ONNX", 0.0)
    onnx_path.parent.parent.mkdir(parents=True, exist_ok=True)
    export: ExportReport = export_onnx(
        unet, request.family, onnx_path, dtype=request.dtype, device=device, controlnet=request.controlnet,
        graph_cache=graph_cache_folder(store),
        progress=lambda stage, f: (BuildCancelled.check(cancel), report_progress(stage, f * EXPORT_SHARE)))
    how = "weights written into the traced graph of an earlier export" if export.reused_graph else "exported"
    report_progress(f"{how} in {export.seconds:.1f} s", EXPORT_SHARE)
    return onnx_path


def build_stage(onnx_path: Path, request: BuildRequest, store: EngineStore, *,
                progress: Progress | None = None, cancel: threading.Event | None = None) -> EngineEntry:
    """Build the engine from the export and record it. Nothing is recorded unless the build finished."""
    BuildCancelled.check(cancel)
    store.check_readable()
    report_progress = progress or (lambda stage, fraction: None)
    engine_id = store.new_id(request.checkpoint)
    engine_path = store.folder / f"{engine_id}.engine"
    points = residual_inputs(onnx_path) if request.controlnet else ()
    build = get_backend(request.backend).build(
        onnx_path, engine_path, [request.family.engine_shapes(p, points) for p in request.profiles],
        compute_capability=request.compute_capability, refit=request.refit, strip_weights=request.refit,
        progress=lambda stage, f: report_progress(stage, EXPORT_SHARE + f * (1 - EXPORT_SHARE)),
        cancel=cancel, cache_dir=store.folder / "cache")
    entry = EngineEntry(
        id=engine_id, checkpoint=request.checkpoint, checkpoint_hash=request.checkpoint_hash,
        family=request.family.name, profiles=[p.to_dict() for p in request.profiles],
        backend=build.backend, backend_version=build.backend_version,
        compute_capabilities=list(build.compute_capabilities), engine_file=engine_path.name,
        engine_bytes=build.engine_bytes, onnx_file=str(onnx_path.relative_to(store.folder).as_posix()),
        loras=list(request.loras), refittable=build.refittable, weight_stripped=build.weight_stripped,
        dtype=str(request.dtype).removeprefix("torch."), build_seconds=round(build.seconds, 2),
        controlnet=bool(points), controlnet_residuals=[[p.channels, p.downscale] for p in points])
    try:
        store.add(entry)
    except BaseException:
        engine_path.unlink(missing_ok=True)  # never leave an engine no entry names
        raise
    report_progress(f"done: engine {build.summary()}", 1.0)
    return entry


def build_engine(unet: torch.nn.Module, request: BuildRequest, store: EngineStore, *,
                 progress: Progress | None = None, cancel: threading.Event | None = None,
                 device: torch.device | str | None = None) -> EngineEntry:
    """Export ``unet`` (reusing an earlier export of the same weights), build the engine and record it.

    Nothing is recorded unless every step finished; a cancel or a failure leaves the store as it was.
    """
    onnx_path = export_stage(unet, request, store, progress=progress, cancel=cancel, device=device)
    return build_stage(onnx_path, request, store, progress=progress, cancel=cancel)

