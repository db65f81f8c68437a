"""What the WebUI has loaded: checkpoint, family and UNet, read the same way by the tab, the API and the
provider."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from modules import devices, hashes, sd_hijack, sd_models, sd_unet, shared

from trt_lib.errors import FamilyError, TrtError
from trt_lib.model.families import Family, detect_family, unet_traits


@dataclass(frozen=True)
class LoadedModel:
    """The loaded checkpoint as the extension names it."""

    checkpoint: str
    """The WebUI's ``model_name`` (subfolders flattened); what "Automatic" matches options by."""
    title: str
    hash: str
    family: Family


class NoModelError(TrtError):
    status_code = 409


def current() -> LoadedModel:
    """The loaded checkpoint and its family; :class:`NoModelError` or :class:`FamilyError` explain otherwise."""
    model = peek()
    info = getattr(model, "sd_checkpoint_info", None)
    if model is None or info is None:
        raise NoModelError("no checkpoint is loaded; pick one in the checkpoint dropdown first")
    unet = model.model.diffusion_model
    prediction = "v" if getattr(model, "parameterization", "eps") == "v" else "eps"
    try:
        family = detect_family(unet_traits(unet, prediction))
    except FamilyError as e:
        raise FamilyError(f"{info.title}: {e}") from e
    return LoadedModel(info.model_name, info.title, sha256(info) or "", family)


def sha256(info: Any) -> str | None:
    """The full sha256 of a loaded checkpoint's file, which the WebUI computes when it loads one
    (``CheckpointInfo.calculate_shorthash``); computed the same way, through the WebUI's hash cache, should it
    be missing. None only under ``--no-hashing``: engines are then matched by the checkpoint's name alone."""
    if info.sha256 is None:
        info.calculate_shorthash()
    return info.sha256


def known_sha256(checkpoint: str) -> str | None:
    """The sha256 of ``checkpoint``'s weights as the WebUI knows them now, to tell engines built from another
    version of it: the loaded checkpoint's (the weights in memory), else the WebUI's cached hash of the file
    (a lookup, never a read of the file; None when the file was not hashed since it last changed)."""
    info = getattr(peek(), "sd_checkpoint_info", None)
    if info is not None and info.model_name == checkpoint:
        return sha256(info)
    found = next((i for i in sd_models.checkpoints_list.values() if i.model_name == checkpoint), None)
    return hashes.sha256_from_cache(found.filename, f"checkpoint/{found.name}") if found is not None else None


def peek() -> Any:
    """The loaded model or None, never loading one: the first read of ``shared.sd_model`` loads the selected
    checkpoint (``model_data.get_sd_model``), which the sd_unet list (made at start-up before the WebUI loads
    one) and the tab must not do."""
    return sd_models.model_data.sd_model


def checkpoint_name() -> str | None:
    """The loaded checkpoint's ``model_name``, cheaply, for per-call checks."""
    info = getattr(peek(), "sd_checkpoint_info", None)
    return info.model_name if info is not None else None


@contextmanager
def pytorch_unet() -> Iterator[torch.nn.Module]:
    """The loaded PyTorch UNet ready to export, as sampling runs it; everything comes back afterwards.

    No engine is active (it would receive the export's calls); attention optimisations are off (xformers and
    friends do not export, plain attention is what TensorRT fuses); no hypernetwork is applied (the WebUI keeps
    the last job's loaded, and its attention would trace them into the graph); and the WebUI's autocast is on,
    as during sampling: its fp16 UNet runs GroupNorm in fp32 (``GroupNorm32`` upcasts) and its patched
    timestep embedding casts to ``devices.dtype_unet``, which only autocast reconciles.
    """
    was = sd_unet.current_unet_option
    if was is not None:
        sd_unet.apply_unet("None")
    sd_hijack.model_hijack.apply_optimizations("None")
    unet = shared.sd_model.model.diffusion_model
    device = next(unet.parameters()).device
    if device != devices.device:
        unet.to(devices.device)
    try:
        with devices.autocast(), without_hypernetworks():
            yield unet
    finally:
        if device != devices.device:
            unet.to(device)
        sd_hijack.model_hijack.apply_optimizations()
        if was is not None:
            sd_unet.apply_unet()


def hypernetworks() -> list[str]:
    """The hypernetworks the WebUI's attention applies in this job: ``shared.loaded_hypernetworks``, filled when
    a job's extra networks are activated (``<hypernet:…>``, Settings → Hypernetwork), never emptied after it."""
    return [str(getattr(h, "name", h)) for h in shared.loaded_hypernetworks]


@contextmanager
def without_hypernetworks() -> Iterator[None]:
    """The WebUI's attention with no hypernetwork applied (an engine never has one); the job's are put back."""
    held = list(shared.loaded_hypernetworks)
    shared.loaded_hypernetworks.clear()
    try:
        yield
    finally:
        shared.loaded_hypernetworks[:] = held


def forward_hook_owner(unet: torch.nn.Module) -> str | None:
    """Who replaced ``unet``'s forward on the instance (ControlNet and similar extensions do, per job), or None.

    Such a hook adds its work inside the PyTorch UNet's forward, which never runs while an engine is active,
    so the job would silently lose it. A forward put back as the class's own bound method is not a hook.
    """
    forward = unet.__dict__.get("forward")
    if forward is None or getattr(forward, "__func__", None) is type(unet).forward:
        return None
    return f"{getattr(forward, '__module__', '?')}.{getattr(forward, '__qualname__', repr(forward))}"
