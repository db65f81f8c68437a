"""Prompt LoRAs (``<lora:name:weight>``) on engines, switched by refit instead of a rebuild.

With an engine active the PyTorch UNet never runs, so the WebUI's LoRA merge (done lazily in each layer's
forward) never reaches the UNet. The WebUI has parsed the prompt and loaded the networks by the time
sampling starts; this module reads that set, merges it for a moment on the CPU copy of the UNet, and refits
the engines with the changed weights (once per change of set). An engine that cannot take it raises
:class:`~trt_lib.engines.lora_refit.UncoveredLoraError`, which the job check turns into a rejection or a fallback.
"""

from __future__ import annotations

import sys
from typing import Any

from modules import shared

from trt_lib.engines.lora_refit import (
    LoraKey,
    LoraRefitter,
    LoraUse,
    MergedWeights,
    UncoveredLoraError,
    describe,
    key_of_entries,
    lora_key,
    parameter_keys,
)
from trt_lib.engines.unet_session import UnetSession
from trt_lib.export.onnx_export import load_weight_map
from trt_lib.store.engine_store import EngineStore

from .lora_bake import merged, networks

INFO_KEY = "TensorRT LoRA"


def loaded_networks() -> list:
    """The Lora extension's list of networks loaded for the running job (empty without the extension)."""
    return getattr(sys.modules.get("networks"), "loaded_networks", [])


def wanted() -> LoraKey:
    """The LoRA set the WebUI loaded for this job."""
    return lora_key(LoraUse(n.name, float(n.unet_multiplier), n.dyn_dim) for n in loaded_networks())


def merge(key: LoraKey, extra: frozenset[str]) -> MergedWeights:
    """The loaded checkpoint's UNet weights under ``key``: those it changes plus ``extra`` (copied to the
    CPU before the UNet is restored)."""
    unet = shared.sd_model.model.diffusion_model
    also = {id(m): m for m in (unet.get_submodule(k.rpartition(".")[0]) for k in extra)}
    with merged(unet, key, also.values()) as info:
        changed = parameter_keys(unet, info.layers)
        state = unet.state_dict()
        values = {k: state[k].detach().to("cpu", copy=True) for k in changed | extra}
    return MergedWeights(key, changed, values)


def add_baked(baked: LoraKey) -> LoraKey:
    """For a job that falls back from an engine with ``baked`` LoRAs to the PyTorch UNet: those the job did
    not load join the WebUI's loaded networks for the UNet alone (text-encoder weight 0), so its Lora code
    merges them as the engine had them. The next job's prompt replaces the set, as for any job. Returns the
    LoRAs added; raises :class:`~trt_lib.errors.TrtError` when the Lora extension is off."""
    net = networks()
    have = list(net.loaded_networks)
    added = tuple(u for u in baked if all(n.name != u.name for n in have))
    if added:
        net.load_networks([n.name for n in have] + [u.name for u in added],
                          [n.te_multiplier for n in have] + [0.0] * len(added),
                          [n.unet_multiplier for n in have] + [u.weight for u in added],
                          [n.dyn_dim for n in have] + [u.dyn_dim for u in added])
    return added


def refitter(store: EngineStore) -> LoraRefitter:
    """The refitter of one session: weight maps from each engine's ONNX export."""
    return LoraRefitter(merge, lambda entry: load_weight_map(store.onnx_path(entry)))


def before_sampling(p: Any, session: UnetSession | None) -> None:
    """Bring the session's engines to this job's LoRAs and say so in the job's infotext."""
    if session is None:
        return
    key = sync(session)
    if key and session.loras is not None:
        p.extra_generation_params[INFO_KEY] = f"{describe(key)} (refit)"


def sync(session: UnetSession) -> LoraKey:
    """Bring the session's engines to the LoRAs loaded now and return that set; raises
    :class:`UncoveredLoraError` when an engine cannot take them.

    Engines with baked LoRAs keep them: a prompt may name the same LoRAs (for their text-encoder part), but
    another set cannot reach such an engine's UNet.
    """
    key = wanted()
    if session.loras is None:
        baked = key_of_entries(session.entries[0].loras) if session.entries else ()
        if key and key != baked:
            raise UncoveredLoraError(
                f"the selected engine has {describe(baked)} baked in, but the prompt asks for {describe(key)}; "
                "choose the checkpoint's engine without baked LoRAs (built refittable), or bake this set")
        return key
    if key == session.loras.wanted == ():
        return key
    session.loras.want(key, session.entries)
    session.sync_loras()
    return key
