"""Check engine (the tab's button and ``POST /tensorrt/v1/engines/{id}/check``): one engine against the loaded
PyTorch UNet it was built from, with :func:`trt_lib.engines.engine_check.check_engine`; the report goes into the
engine's manifest entry and the engine list.

The PyTorch side runs as sampling would run it, under the WebUI's queue lock and only for as long as it
takes: the UNet brought to the GPU and back (the WebUI keeps it on the CPU while an engine is active; with
``lowvram`` it is left where it is), the WebUI's autocast, the engine's baked LoRAs merged through the
WebUI's own Lora code and restored bit for bit, and the class's forward called with no SdUnet active (the
WebUI's patched forward would otherwise hand the call to the engine; an extension's hook on the instance is
skipped). The engine runs on the runtime "Run engines with" names, in a runner of its own (a loaded one
may hold a prompt LoRA), under the queue lock only when it runs on the GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from modules import call_queue, devices, sd_unet, shared

from trt_lib.engines.engine_check import CheckReport, Feeds, Progress, UnetFn, check_engine, tolerance_for
from trt_lib.errors import TrtError
from trt_lib.model.families import Family, get_family
from trt_lib.store.engine_store import EngineEntry

from . import loaded_model, lora_bake
from .extension import EXT

_DTYPES = {torch.float16: "float16", torch.float32: "float32", torch.bfloat16: "bfloat16"}


class EngineNotFoundError(TrtError):
    status_code = 404


class OtherCheckpointError(TrtError):
    status_code = 409


class CheckUnavailableError(TrtError):
    status_code = 503


def find(engine_id: str) -> EngineEntry:
    """The engine's entry; :class:`EngineNotFoundError` (404) naming the known ones otherwise."""
    entries = EXT.store.entries()
    entry = next((e for e in entries if e.id == engine_id), None)
    if entry is None:
        known = ", ".join(e.id for e in entries) or "none yet"
        raise EngineNotFoundError(f"no engine {engine_id!r}; engines: {known}")
    return entry


def refuse_other_checkpoint(entry: EngineEntry) -> None:
    """:class:`OtherCheckpointError` (409) unless the loaded checkpoint is the one ``entry`` was built from:
    same name, same file (hash, where both are known) and same family."""
    model = loaded_model.current()
    if model.checkpoint != entry.checkpoint:
        why = f"{model.title} is loaded"
    elif entry.checkpoint_hash and model.hash and entry.checkpoint_hash != model.hash:
        why = f"the loaded {model.title} is another file under that name (hash {model.hash[:10]})"
    elif model.family.name != entry.family:
        why = f"the loaded {model.title} is {model.family.label}"
    else:
        return
    raise OtherCheckpointError(f"engine {entry.id} was built from {entry.checkpoint} "
                               f"(hash {entry.checkpoint_hash[:10] or 'unknown'}), but {why}: load that checkpoint "
                               "to check this engine against it")


def call_unet(unet: torch.nn.Module, family: Family, feeds: Feeds) -> torch.Tensor:
    """One call of the UNet's class forward, as the WebUI's sampler makes it (SDXL's ``y`` as a keyword)."""
    x, timesteps, context = (feeds[n] for n in family.input_names[:3])
    extra = {"y": feeds["y"]} if "y" in feeds else {}
    return type(unet).forward(unet, x, timesteps, context, **extra)


@contextmanager
def baked_loras(unet: torch.nn.Module, entry: EngineEntry) -> Iterator[None]:
    """The UNet as the engine was exported: exactly the checkpoint plus its baked LoRAs, no LoRA of an earlier
    job (the WebUI merges those lazily in each layer's forward) - the export's own context, restored after."""
    with lora_bake.exported(unet, entry.loras):
        yield


@contextmanager
def pytorch_reference(entry: EngineEntry) -> Iterator[UnetFn]:
    """The loaded PyTorch UNet, ready to compute the check's reference outputs; everything is put back after."""
    family = get_family(entry.family)
    with call_queue.queue_lock:
        refuse_other_checkpoint(entry)  # again: the checkpoint may have changed while the lock was waited for
        model = shared.sd_model
        unet = model.model.diffusion_model
        was_on = next(unet.parameters()).device
        moved = not model.lowvram and was_on != devices.device
        active = sd_unet.current_unet
        try:
            if moved:
                unet.to(devices.device)
            sd_unet.current_unet = None
            with baked_loras(unet, entry), devices.autocast(), loaded_model.without_hypernetworks():
                yield lambda feeds: call_unet(unet, family, feeds)
        finally:
            sd_unet.current_unet = active
            if moved:
                unet.to(was_on)
                devices.torch_gc()


def check(engine_id: str, seed: int = 0, progress: Progress | None = None) -> tuple[EngineEntry, CheckReport]:
    """Check an engine, record the report in its manifest entry and return both."""
    entry = find(engine_id)
    refuse_other_checkpoint(entry)
    store = EXT.store
    try:
        runner = EXT.runner_factory(store, entry)
    except TrtError as e:
        raise CheckUnavailableError(
            f"engine {entry.id} cannot run here ({e}). To check its ONNX export on this machine, choose 'ONNX "
            "Runtime (reference)' under Settings → TensorRT → 'Run engines with'.") from e
    unet_dtype = _DTYPES.get(devices.dtype_unet, "float16")
    on_gpu = torch.device(devices.device).type == "cuda"
    try:
        report = check_engine(
            runner, lambda: pytorch_reference(entry), get_family(entry.family), entry.parsed_profiles,
            dtype=devices.dtype_unet, device=devices.device, tolerance=tolerance_for(entry.dtype, unet_dtype),
            runtime=runner.runtime_name, reference=f"PyTorch UNet ({unet_dtype}, {devices.device})", seed=seed,
            engine_scope=(lambda: call_queue.queue_lock) if on_gpu else nullcontext, progress=progress)
    except TrtError:
        raise
    except Exception as e:  # a runtime's own error (ORT, TensorRT) while running the engine
        raise CheckUnavailableError(f"the check of {entry.id} could not run: {e}") from e
    finally:
        runner.close()
    recorded = store.record_check(entry.id, report.to_dict())
    print(f"[TensorRT] check of {entry.id}: {report.summary()}")
    return recorded, report


def report_markdown(entry: EngineEntry, report: CheckReport) -> str:
    """The tab's answer: verdict, per-shape figures, and what to do when it failed."""
    head = ("✓ " if report.passed else "⚠ ") + f"{entry.id}: {report.summary()}"
    rows = [f"| {r.shape} | {r.relative_error:.3g} | {r.engine_nonfinite} | {r.pytorch_nonfinite} | "
            f"{'ok' if r.passed else 'FAILED'} |" for r in report.shapes]
    table = "\n".join(["| shape | relative error | NaN/inf (engine) | NaN/inf (PyTorch) | |", "|---|---|---|---|---|",
                       *rows])
    parts = [head, table, f"Metric: {report.metric}; tolerance {report.tolerance:g}; {report.runtime} "
                        f"against {report.reference}, seed {report.seed}, {report.seconds:.1f} s."]
    if report.advice:
        parts.append(f"**What to do:** {report.advice}")
    return "\n\n".join(parts)
