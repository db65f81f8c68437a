"""LoRAs through the WebUI's own Lora extension (its ``networks`` module): merged into the loaded UNet for an
export (baking), or for a moment to read merged weights for a refit, then restored from its CPU backups.

Merging through the WebUI's code means every LoRA type and key layout it understands works the same here.
Every export, plain or baked, starts from the checkpoint's own weights (the WebUI's Lora extension leaves the
last job's LoRAs merged in the layers) and traces the layers' own forwards, not the extension's patches. A
bake checks the restore bit for bit (a digest of every UNet tensor before and after) and refuses to let the
engine be recorded otherwise.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from trt_lib.engines.lora_refit import LoraError, LoraKey, describe, key_of_entries, state_digest
from trt_lib.errors import TrtError

MERGED_TYPES = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.MultiheadAttention)
"""The layer types whose forward the WebUI patches to call ``network_apply_weights``."""

TEXT_ENCODER_NOTE = ("Only the UNet part of a LoRA goes into the engine; its text-encoder part keeps working "
                     "through the WebUI when the LoRA is also in the prompt.")


WEIGHT_LIMIT = 10.0
"""Largest LoRA weight a bake takes (either sign): far beyond any useful weight, and well inside fp16."""
WEIGHTS = f"-{WEIGHT_LIMIT:g}..{WEIGHT_LIMIT:g}, not 0"
"""The accepted weights, as the tab and the API state them."""


class LoraInputError(LoraError):
    """Bad LoRA input for a bake (weight, name, a LoRA twice); 422 like every LoRA that cannot be used."""


class LoraNotFoundError(LoraError):
    """No LoRA of that name in the WebUI's list (422, as other bad LoRA input)."""


class LoraUnavailableError(TrtError):
    status_code = 503


class LoraRestoreError(TrtError):
    """The UNet did not come back to its exact weights after a bake: the engine must not be recorded."""

    status_code = 500


@dataclass(frozen=True)
class MergeInfo:
    """What one merge touched: the UNet layers it changes, and how many text-encoder layers it left alone."""

    layers: list[torch.nn.Module]
    text_encoder_layers: int


def networks() -> ModuleType:
    """The WebUI's ``networks`` module (imported by the built-in Lora extension when it loaded)."""
    module = sys.modules.get("networks")
    if module is None or not hasattr(module, "network_apply_weights"):
        raise LoraUnavailableError("the built-in Lora extension is not loaded (enable it under Extensions)")
    return module


def available_names() -> list[str]:
    """The WebUI's LoRA list (what its Lora tab shows), for the TensorRT tab's picker; empty without the
    Lora extension."""
    try:
        net = networks()
    except LoraUnavailableError:
        return []
    net.list_available_networks()
    return sorted(net.available_networks)


def check_loras(loras: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``[{"name", "weight"}]`` normalised, each LoRA once with a weight in ``-WEIGHT_LIMIT..WEIGHT_LIMIT``
    other than 0 (:class:`LoraInputError` naming every problem); :class:`LoraNotFoundError` listing the
    available LoRAs for an unknown name (the list is re-read from disk first, as the WebUI does)."""
    checked, problems = [], []
    for lo in loras:
        name, weight = str(lo.get("name", "")).strip(), lo.get("weight", 1.0)
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            problems.append(f"LoRA {name!r}: weight {weight!r} is not a number")
            continue
        if not name:
            problems.append("a LoRA without a name")
        elif not (math.isfinite(weight) and 0 < abs(weight) <= WEIGHT_LIMIT):
            problems.append(f"LoRA {name!r}: weight {weight:g} is not in {WEIGHTS}"
                            + (" (0 leaves the UNet as it is: remove the LoRA instead)" if weight == 0 else ""))
        elif any(c["name"] == name for c in checked):
            problems.append(f"LoRA {name!r} is listed twice: list it once, with the sum of its weights")
        else:
            checked.append({"name": name, "weight": weight})
    if problems:
        raise LoraInputError("; ".join(problems))
    if not checked:
        return checked
    net = networks()
    unknown = [lo["name"] for lo in checked if lo["name"] not in net.available_network_aliases]
    if unknown:
        net.list_available_networks()
        unknown = [name for name in unknown if name not in net.available_network_aliases]
    if unknown:
        names = ", ".join(sorted(net.available_networks)) or "none (put LoRA files into models/Lora)"
        raise LoraNotFoundError(f"unknown LoRA {', '.join(map(repr, unknown))}; available: {names}")
    return checked


def unet_layers(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The UNet layers the WebUI merges LoRAs into (those its Lora extension named)."""
    return [m for m in unet.modules() if isinstance(m, MERGED_TYPES) and hasattr(m, "network_layer_name")]


def _apply(layers: Iterable[torch.nn.Module]) -> None:
    net = networks()
    with torch.no_grad():
        for layer in layers:
            net.network_apply_weights(layer)


@contextmanager
def _loaded_kept(net: ModuleType) -> Iterator[None]:
    """The WebUI's loaded LoRA list, with each LoRA's multipliers, put back as it was afterwards."""
    saved = [(n, n.te_multiplier, n.unet_multiplier, n.dyn_dim) for n in net.loaded_networks]
    try:
        yield
    finally:
        net.loaded_networks.clear()
        for n, te, unet_multiplier, dyn in saved:
            n.te_multiplier, n.unet_multiplier, n.dyn_dim = te, unet_multiplier, dyn
            net.loaded_networks.append(n)


@contextmanager
def merged(unet: torch.nn.Module, key: LoraKey, also: Iterable[torch.nn.Module] = ()) -> Iterator[MergeInfo]:
    """``unet`` with the LoRA set ``key`` merged by the WebUI (its layers, plus ``also`` brought to the same
    state); afterwards those layers are restored from the WebUI's CPU backups and its loaded LoRA list, with
    each LoRA's multipliers, is put back as it was."""
    net = networks()
    layers: list[torch.nn.Module] = list(also)
    with _loaded_kept(net):
        try:
            if key:
                net.load_networks([u.name for u in key], [u.weight for u in key], [u.weight for u in key],
                                  [u.dyn_dim for u in key])
                loaded = {n.name for n in net.loaded_networks}
                missing = [u.name for u in key if u.name not in loaded]
                if missing:
                    raise LoraNotFoundError(f"LoRA {', '.join(missing)} could not be loaded")
            else:
                net.loaded_networks.clear()
            inside = {id(m) for m in unet_layers(unet)}
            touched = {id(m.sd_module): m.sd_module for n in net.loaded_networks for m in n.modules.values()}
            changes = [m for i, m in touched.items() if i in inside]
            layers += [m for m in changes if all(m is not x for x in layers)]
            _apply(layers)
            yield MergeInfo(changes, sum(i not in inside for i in touched))
        finally:
            net.loaded_networks.clear()
            _apply(layers)


@contextmanager
def _at_base(unet: torch.nn.Module, net: ModuleType) -> Iterator[None]:
    """``unet`` at the checkpoint's own weights: the LoRAs earlier PyTorch jobs merged into its layers (the
    WebUI leaves the last job's merge in place until a later forward asks for another set) are taken off by
    the WebUI's restore from its backups. The loaded LoRA list comes back afterwards, so the next PyTorch
    job merges again what it asks for."""
    with _loaded_kept(net):
        net.loaded_networks.clear()
        layers = unet_layers(unet)
        _apply(layers)
        left = [m.network_layer_name for m in layers if getattr(m, "network_current_names", ())]
        if left:
            raise LoraRestoreError(f"the WebUI's Lora extension could not take its merged LoRAs off {len(left)} "
                                   f"UNet layers (e.g. {left[0]}); nothing was exported. Reload the checkpoint.")
        yield


@contextmanager
def _original_forwards(net: ModuleType) -> Iterator[None]:
    """The layer classes' own ``forward`` while tracing, instead of the Lora extension's patches.

    ``lora_patches`` replaces the class ``forward`` of every merged layer type with one that first runs
    ``network_apply_weights`` (or, with ``lora_functional``, adds the LoRAs' outputs): traced, those put the
    extension's in-place restores (``aten::copy``, which ONNX cannot express) or its LoRA arithmetic into the
    graph. It keeps the originals on ``networks.originals``; they are put in for the export alone, which runs
    under the WebUI's queue lock (no generation beside it), and the patches come back afterwards.
    """
    originals = getattr(net, "originals", None)
    swapped = []
    for cls in MERGED_TYPES:
        original = getattr(originals, f"{cls.__name__}_forward", None)
        if original is not None and cls.forward is not original:
            swapped.append((cls, cls.forward))
            cls.forward = original
    try:
        yield
    finally:
        for cls, forward in swapped:
            cls.forward = forward


@contextmanager
def exported(unet: torch.nn.Module, loras: Sequence[Mapping[str, Any]]) -> Iterator[MergeInfo | None]:
    """``unet`` holding exactly the checkpoint's weights plus ``loras`` (none for a plain engine) and nothing
    else, whatever LoRAs earlier jobs used, with the Lora extension's layer patches out of the way, for an
    export. Afterwards the UNet is restored and checked bit for bit (:class:`LoraRestoreError` if any tensor
    differs, so the caller records nothing), and the WebUI's LoRA state and patches are as they were."""
    try:
        net = networks()
    except LoraUnavailableError:
        if loras:
            raise
        yield None  # without the Lora extension nothing merges LoRAs into the UNet
        return
    key = key_of_entries(check_loras(loras))
    with _at_base(unet, net), _original_forwards(net):
        if not key:
            yield None
            return
        before = state_digest(unet)
        with merged(unet, key) as info:
            if not info.layers:
                raise LoraError(f"LoRA {describe(key)} changes no layer of this UNet (made for another model family?)")
            yield info
        changed = [k for k, digest in state_digest(unet).items() if before.get(k) != digest]
        if changed:
            raise LoraRestoreError(f"after baking {describe(key)} the UNet's weights did not come back exactly "
                                   f"({len(changed)} tensors differ, e.g. {changed[0]}); the engine was not "
                                   "recorded. Reload the checkpoint before generating.")
